#!/usr/bin/env bash
# Print the stable text form of a publish file that podium wrote with
# publish.transport=file: one line per topic, sorted by topic in byte
# order, with the number of messages published on it and the last of
# them, byte for byte as podium wrote it:
#
#   TOPIC COUNT {"topic":"TOPIC","payload":{...}}
#
# The last message of a race leaderboard topic is the race's final
# leaderboard, at its highest revision. The same is true of the results
# and of every class leaderboard.
#
#   bash tools/golden-summary.sh PUBLISH_FILE
set -euo pipefail

if [[ $# -ne 1 || ! -r "$1" ]]; then
    echo "usage: bash tools/golden-summary.sh PUBLISH_FILE (a readable publish file of podium)" >&2
    exit 2
fi

# Field 4, split at double quotes, is the topic: {"topic":"TOPIC",...
LC_ALL=C awk -F'"' '
$2 != "topic" { printf "line %d is not a podium publish line\n", NR > "/dev/stderr"; bad = 1; exit 1 }
{ count[$4]++; last[$4] = $0 }
END { if (!bad) for (topic in last) print topic, count[topic], last[topic] }
' "$1" | LC_ALL=C sort -k1,1
