"""Workers: FSDP2 actor / reference / critic, and rollout engines (hf, vllm) behind one interface."""
