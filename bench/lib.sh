# shellcheck shell=bash
# Shared helpers of the benchmark scripts: JSON output and the machine
# description. Callers set REPO_DIR and BUILD_DIR before they source it.

# Print the numeric field NAME of the one-line JSON object LINE.
json_number() {
    local line="$1" name="$2"
    grep -o "\"$name\":[0-9.e+-]*" <<<"$line" | head -n 1 | cut -d: -f2
}

# json_literal LINE NAME: the true, false or null of field NAME in LINE.
json_literal() {
    grep -o "\"$2\":[a-z]*" <<<"$1" | head -n 1 | cut -d: -f2
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

# The recording that the comparison benchmarks share: the riders, classes,
# seed and start time of bench/replay.sh. Duplicates draw from the same
# random sequence whatever their fraction, so a recording with duplicates
# contains the same first copies as one without.
BENCH_RACERS=1000
BENCH_CLASSES=6
BENCH_SEED=7
BENCH_START_MS=1767225600000

# Install the Debian packages given that are missing, as root or with sudo.
install_apt_packages() {
    local package missing=() sudo=""
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null |
            grep -q 'install ok installed' || missing+=("$package")
    done
    ((${#missing[@]} > 0)) || return 0
    [[ "$(id -u)" -eq 0 ]] || sudo=sudo
    $sudo apt-get update
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y \
        --no-install-recommends "${missing[@]}"
}

# Print a TCP port on 127.0.0.1 that was free a moment ago.
free_port() {
    node -e '
        const server = require("net").createServer();
        server.listen(0, "127.0.0.1", () => {
            console.log(server.address().port);
            server.close();
        });
    '
}

# Build podium and the given extra targets in BUILD_DIR (Release).
build_podium() {
    cmake -S "$REPO_DIR" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release \
        -DPODIUM_WERROR=ON -DPODIUM_TESTS=OFF >/dev/null
    cmake --build "$BUILD_DIR" --target podium "$@" -j2
}

# simulate_recording OUT SECONDS DUPLICATES: write the shared recording of
# SECONDS seconds with the fraction DUPLICATES of records put twice, and
# print the summary line of `podium simulate`.
simulate_recording() {
    local out="$1" seconds="$2" duplicates="$3"
    "$BUILD_DIR/daemon/podium" simulate --out "$out" --racers "$BENCH_RACERS" \
        --seconds "$seconds" --classes "$BENCH_CLASSES" --seed "$BENCH_SEED" \
        --duplicates "$duplicates" --start-ms "$BENCH_START_MS"
}

# bench_replay FILE DIR BATCH: replay FILE into a new store in DIR with the
# file transport and --batch-size BATCH, under GNU time. Prints
# "wall_s user_s sys_s peak_rss_kb" and leaves the summary of
# `podium replay` in DIR/summary.json.
bench_replay() {
    local file="$1" dir="$2" batch="$3"
    local db="$dir/replay.db" out="$dir/published.jsonl"
    rm -f "$db" "$db-wal" "$db-shm" "$out"
    if ! /usr/bin/time -f '%e %U %S %M' -o "$dir/time.txt" \
        "$BUILD_DIR/daemon/podium" replay --batch-size "$batch" \
        --progress never --set "store.path=$db" --set publish.transport=file \
        --set "publish.file=$out" "$file" \
        >"$dir/summary.json" 2>"$dir/replay.log"; then
        echo "$(basename "$0"): podium replay of $file failed; the last" \
            "lines of its log:" >&2
        tail -n 20 "$dir/replay.log" >&2
        return 1
    fi
    rm -f "$db" "$db-wal" "$db-shm" "$out"
    cat "$dir/time.txt"
}
