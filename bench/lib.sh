# Shared helpers of the benchmark scripts: JSON output and the machine
# description. Callers set REPO_DIR and BUILD_DIR before they source it.

# Print the numeric field NAME of the one-line JSON object LINE.
json_number() {
    local line="$1" name="$2"
    grep -o "\"$name\":[0-9.e+-]*" <<<"$line" | head -n 1 | cut -d: -f2
}

# Escape a string for a JSON string literal.
json_string() {
    local text="$1"
    text="${text//\\/\\\\}"
    text="${text//\"/\\\"}"
    printf '"%s"' "$text"
}

check_free_space() {
    local dir="$1" free_kb
    free_kb="$(df -Pk "$dir" | awk 'NR == 2 { print $4 }')"
    if (( free_kb < MIN_FREE_GB * 1024 * 1024 )); then
        echo "$(basename "$0"): only $(( free_kb / 1024 / 1024 )) GB free on the file" \
            "system of $dir; the benchmark needs at least $MIN_FREE_GB GB." \
            "Free some space and run it again." >&2
        exit 1
    fi
}

# Print one JSON line describing the machine and the software.
describe_machine() {
    local cpu cores mem_kb fs kernel sqlite compiler load commit
    cpu="$(grep -m 1 '^model name' /proc/cpuinfo | cut -d: -f2- |
        sed 's/^ *//')"
    cores="$(nproc)"
    mem_kb="$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)"
    fs="$(findmnt -no FSTYPE,SOURCE -T "$BUILD_DIR" | tr -s ' ')"
    kernel="$(uname -sr)"
    sqlite="$(pkg-config --modversion sqlite3)"
    compiler="$(cc --version | head -n 1)"
    load="$(cut -d' ' -f1-3 /proc/loadavg)"
    # The commit measured; "-dirty" when the work tree had changes.
    commit="$(git -C "$REPO_DIR" describe --always --dirty 2>/dev/null ||
        echo unknown)"
    printf '{"machine":{"cpu":%s,"cores":%s,"mem_kb":%s,"filesystem":%s,' \
        "$(json_string "$cpu")" "$cores" "$mem_kb" "$(json_string "$fs")"
    printf '"kernel":%s,"sqlite":%s,"compiler":%s,"loadavg_at_start":%s,' \
        "$(json_string "$kernel")" "$(json_string "$sqlite")" \
        "$(json_string "$compiler")" "$(json_string "$load")"
    printf '"commit":%s,"date":%s}}\n' "$(json_string "$commit")" \
        "$(json_string "$(date -u +%Y-%m-%dT%H:%M:%SZ)")"
}
