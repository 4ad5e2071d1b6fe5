# Shared by the scripts/ launchers: `KEY VALUE` arguments in any order, each key known and given a value.
#   source "$(dirname "$0")/keys.sh"; parse_keys "KEY1 KEY2" "$@"
# Sets each given key as a shell variable (defaults are set by the caller beforehand); an unknown key or a key
# without a value exits with code 2 and the list of known keys. Arguments after `--` are left in EXTRA.
parse_keys() {
  local known="$1" key
  shift
  EXTRA=()
  while [ $# -gt 0 ]; do
    if [ "$1" = "--" ]; then shift; EXTRA=("$@"); break; fi
    key="$1"
    if ! [[ " $known " == *" $key "* ]]; then echo "unknown key '$key'; known keys: $known" >&2; exit 2; fi
    if [ $# -lt 2 ]; then echo "key '$key' needs a value" >&2; exit 2; fi
    printf -v "$key" '%s' "$2"
    shift 2
  done
}
