# Source this file, then:
#   next_on_path NAME SELF
#                 print the first executable NAME on PATH that is not the file SELF (both
#                 compared with links resolved); fail when there is none. For the scripts
#                 that stand in for a program of the same name (scripts/lib/wasm-bin/).

next_on_path() {
    local name=$1 self dir dirs
    self=$(readlink -f "$2")
    IFS=: read -ra dirs <<<"$PATH"
    for dir in "${dirs[@]}"; do
        [[ -n "$dir" && -f "$dir/$name" && -x "$dir/$name" ]] || continue
        [[ "$(readlink -f "$dir/$name")" != "$self" ]] || continue
        printf '%s\n' "$dir/$name"
        return 0
    done
    return 1
}
