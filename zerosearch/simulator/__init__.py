"""Simulation tuning: teach an LLM to imitate a search engine, so RL training needs no real searches.

The pipeline (`python -m zerosearch.simulator {collect,finetune,evaluate}`, or `scripts/train_simulator.sh`):
1. `collect`: ask a real engine (local BM25, a wiki retriever, Google) the training questions and/or the queries
   a policy wrote, label its documents useful / noisy by whether they contain a gold answer, and write chat rows
   in the `simulate_sft` prompt format (`collect.py`);
2. `finetune`: supervised fine-tuning on those rows, FSDP2 on one process or under torchrun, written as an HF
   directory that vLLM serves (`sft.py`);
3. `evaluate`: ask the served simulator for useful and noisy documents on held-out queries and measure how often
   useful documents hold the answer and noisy ones leak it (`quality.py`).
Then train the policy against it: `bash train_grpo.sh SEARCH_MODE simulate_sft SIMULATION_LLM <dir>`.
"""
