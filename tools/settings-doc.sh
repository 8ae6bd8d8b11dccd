#!/usr/bin/env bash
# Write the table of settings in docs/operations.md from `podium run
# --help`, so that the page lists every setting with its environment
# variable, default and accepted values as the binary has them.
#
#   bash tools/settings-doc.sh PODIUM_BIN [--check] [DOC]
#
# DOC defaults to docs/operations.md. The table goes between the lines
# "<!-- settings-table:begin -->" and "<!-- settings-table:end -->". With
# --check, nothing is written, and the exit status is 1 when the table in
# DOC differs from the one the binary gives.
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BEGIN='<!-- settings-table:begin -->'
END='<!-- settings-table:end -->'

die() {
    echo "settings-doc: $*" >&2
    exit 2
}

# Print the table from the settings part of `podium run --help`, whose
# entries are "  KEY (ENV)", the help text and "default: X; accepted: Y".
render_table() {
    local podium="$1"
    "$podium" run --help | awk '
        function cell(text) {
            gsub(/\|/, "\\|", text)
            gsub(/</, "\\<", text)
            gsub(/>/, "\\>", text)
            return text
        }
        function flush() {
            if (key != "")
                printf "| `%s` | `%s` | %s | %s | %s |\n", key, env, cell(def), cell(accepted), cell(help)
            key = ""
        }
        /^settings / { in_settings = 1; next }
        !in_settings { next }
        /^  [^ ]/ {
            flush()
            line = $0
            sub(/^  /, "", line)
            key = line
            sub(/ .*/, "", key)
            env = line
            sub(/^[^(]*\(/, "", env)
            sub(/\)$/, "", env)
            help = ""
            next
        }
        /^      default: / {
            line = $0
            sub(/^      default: /, "", line)
            def = line
            sub(/; accepted: .*/, "", def)
            accepted = line
            sub(/^.*; accepted: /, "", accepted)
            next
        }
        /^      / {
            line = $0
            sub(/^      /, "", line)
            help = help == "" ? line : help " " line
        }
        BEGIN {
            print "| setting | environment variable | default | accepted values | meaning |"
            print "| --- | --- | --- | --- | --- |"
        }
        END { flush() }
    '
}

main() {
    (($# >= 1)) || die "usage: bash tools/settings-doc.sh PODIUM_BIN [--check] [DOC]"
    local podium="$1" check=0 doc="$REPO_DIR/docs/operations.md"
    shift
    if [[ "${1:-}" == --check ]]; then
        check=1
        shift
    fi
    [[ -n "${1:-}" ]] && doc="$1"
    [[ -x "$podium" ]] || die "$podium is not an executable file: build podium first"
    [[ -f "$doc" ]] || die "$doc does not exist"
    grep -qxF "$BEGIN" "$doc" && grep -qxF "$END" "$doc" ||
        die "$doc has no lines \"$BEGIN\" and \"$END\" around the settings table"

    local table
    table="$(render_table "$podium")"
    [[ "$(wc -l <<<"$table")" -gt 2 ]] || die "found no settings in the output of $podium run --help"

    local updated
    updated="$(awk -v begin="$BEGIN" -v end="$END" -v table="$table" '
        $0 == begin { print; print table; skipping = 1; next }
        $0 == end { skipping = 0 }
        !skipping { print }
    ' "$doc")"
    if ((check)); then
        if [[ "$updated" != "$(cat "$doc")" ]]; then
            diff <(cat "$doc") <(echo "$updated") >&2 || true
            echo "settings-doc: the settings table of $doc differs from $podium run --help (lines above: < is the page, > the binary); run 'bash tools/settings-doc.sh $podium' to update it" >&2
            return 1
        fi
        return 0
    fi
    printf '%s\n' "$updated" >"$doc"
}

main "$@"
