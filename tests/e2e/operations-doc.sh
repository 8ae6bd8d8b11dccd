#!/usr/bin/env bash
# docs/operations.md must list every setting of `podium run --help` with
# its environment variable, default and accepted values, as
# tools/settings-doc.sh writes them. test_metrics checks the metric names
# of the same page.
set -euo pipefail

SOURCE_DIR="${PODIUM_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"

[[ -x "${PODIUM_BIN:-}" ]] || {
    echo "[e2e_operations_doc] FAILED: PODIUM_BIN='${PODIUM_BIN:-}' is not an executable file: run this test through ctest" >&2
    exit 1
}
bash "$SOURCE_DIR/tools/settings-doc.sh" "$PODIUM_BIN" --check "$SOURCE_DIR/docs/operations.md" || {
    echo "[e2e_operations_doc] FAILED: the settings table of docs/operations.md is not the one of podium run --help" >&2
    exit 1
}
echo "[e2e_operations_doc] the settings table matches podium run --help"
