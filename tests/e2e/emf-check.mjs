// Check the EMF lines that `podium run` wrote to standard output against
// the CloudWatch embedded metric format and against a /metrics body.
//
//   node emf-check.mjs EMF_FILE METRICS_FILE NAMESPACE STREAM SHARD_ID...
//
// METRICS_FILE is /metrics taken once podium had nothing left to do, and
// the EMF lines end with the last ones that podium wrote when it stopped.
// Every counter then adds up, over all lines, to its /metrics value. The
// exceptions are BatchesCommitted, because podium commits a job for the
// stream clock every second, and the gauges, which are compared with the
// last line that has them. Prints each problem and exits 1 when there is
// any.
import { readFileSync } from "node:fs";

const [emfFile, metricsFile, namespace, stream, ...shards] = process.argv.slice(2);
if (!emfFile || !metricsFile || !namespace || !stream || shards.length === 0) {
    console.error("usage: node emf-check.mjs EMF_FILE METRICS_FILE NAMESPACE STREAM SHARD_ID...");
    process.exit(2);
}

const problems = [];
const problem = (text) => problems.push(text);

// The units that the specification lists for MetricDefinition.Unit.
const UNITS = new Set([
    "Seconds", "Microseconds", "Milliseconds", "Bytes", "Kilobytes", "Megabytes",
    "Gigabytes", "Terabytes", "Bits", "Kilobits", "Megabits", "Gigabits", "Terabits",
    "Percent", "Count", "Bytes/Second", "Kilobytes/Second", "Megabytes/Second",
    "Gigabytes/Second", "Terabytes/Second", "Bits/Second", "Kilobits/Second",
    "Megabits/Second", "Gigabits/Second", "Terabits/Second", "Count/Second", "None",
]);

const isObject = (v) => typeof v === "object" && v !== null && !Array.isArray(v);
const extraKeys = (object, allowed) => Object.keys(object).filter((k) => !allowed.includes(k));

// Check one line against the structure of the specification; returns the
// metric directives or null.
function checkStructure(doc, where) {
    if (!isObject(doc)) {
        problem(`${where}: the root is not a JSON object`);
        return null;
    }
    const aws = doc._aws;
    if (!isObject(aws)) {
        problem(`${where}: _aws is missing or not an object`);
        return null;
    }
    for (const key of extraKeys(aws, ["Timestamp", "CloudWatchMetrics"])) {
        problem(`${where}: _aws has the member ${key}, which the specification does not define`);
    }
    if (!Number.isInteger(aws.Timestamp) || aws.Timestamp <= 0) {
        problem(`${where}: _aws.Timestamp ${JSON.stringify(aws.Timestamp)} is not a positive integer of milliseconds`);
    } else if (Math.abs(aws.Timestamp - Date.now()) > 3600 * 1000) {
        problem(`${where}: _aws.Timestamp ${aws.Timestamp} is more than an hour from now, so it is not milliseconds since the epoch`);
    }
    if (!Array.isArray(aws.CloudWatchMetrics) || aws.CloudWatchMetrics.length === 0) {
        problem(`${where}: _aws.CloudWatchMetrics is missing or not a non-empty array`);
        return null;
    }
    aws.CloudWatchMetrics.forEach((directive, d) => {
        const at = `${where}: CloudWatchMetrics[${d}]`;
        if (!isObject(directive)) {
            problem(`${at} is not an object`);
            return;
        }
        for (const key of extraKeys(directive, ["Namespace", "Dimensions", "Metrics"])) {
            problem(`${at} has the member ${key}, which the specification does not define`);
        }
        if (typeof directive.Namespace !== "string" || directive.Namespace.length < 1 || directive.Namespace.length > 1024) {
            problem(`${at}.Namespace ${JSON.stringify(directive.Namespace)} is not a string of 1 to 1024 characters`);
        } else if (directive.Namespace !== namespace) {
            problem(`${at}.Namespace is ${JSON.stringify(directive.Namespace)}, expected ${JSON.stringify(namespace)}`);
        }
        if (!Array.isArray(directive.Dimensions)) {
            problem(`${at}.Dimensions is missing or not an array`);
        } else {
            directive.Dimensions.forEach((set, s) => {
                if (!Array.isArray(set) || set.length > 30) {
                    problem(`${at}.Dimensions[${s}] is not an array of at most 30 names`);
                    return;
                }
                for (const name of set) {
                    if (typeof name !== "string") {
                        problem(`${at}.Dimensions[${s}] contains ${JSON.stringify(name)}, which is not a string`);
                    } else if (typeof doc[name] !== "string" || doc[name].length < 1 || doc[name].length > 1024) {
                        problem(`${at}: dimension ${name} has no root member that is a string of 1 to 1024 characters`);
                    }
                }
            });
        }
        if (!Array.isArray(directive.Metrics) || directive.Metrics.length === 0 || directive.Metrics.length > 100) {
            problem(`${at}.Metrics is not an array of 1 to 100 metric definitions`);
            return;
        }
        const names = new Set();
        directive.Metrics.forEach((metric, m) => {
            const mat = `${at}.Metrics[${m}]`;
            if (!isObject(metric)) {
                problem(`${mat} is not an object`);
                return;
            }
            for (const key of extraKeys(metric, ["Name", "Unit", "StorageResolution"])) {
                problem(`${mat} has the member ${key}, which the specification does not define`);
            }
            if (typeof metric.Name !== "string" || metric.Name.length < 1 || metric.Name.length > 255) {
                problem(`${mat}.Name ${JSON.stringify(metric.Name)} is not a string of 1 to 255 characters`);
                return;
            }
            if (names.has(metric.Name)) problem(`${mat}: ${metric.Name} is listed twice`);
            names.add(metric.Name);
            if (metric.Unit !== undefined && !UNITS.has(metric.Unit)) {
                problem(`${mat}: ${metric.Name} has the unit ${JSON.stringify(metric.Unit)}, which is not a CloudWatch unit`);
            }
            if (typeof doc[metric.Name] !== "number" || !Number.isFinite(doc[metric.Name])) {
                problem(`${mat}: ${metric.Name} has no root member that is a number, got ${JSON.stringify(doc[metric.Name])}`);
            }
        });
    });
    return aws.CloudWatchMetrics;
}

// The /metrics sample of each EMF metric of the stream line. A name
// FAMILY.VALUE stands for the sample of FAMILY with that label value.
const COUNTERS = {
    RecordsRead: "podium_records_read_total",
    RecordsApplied: "podium_records_applied_total",
    Duplicates: "podium_duplicates_total",
    ValidationConflicts: "podium_validation_conflicts_total",
    RecordsRejected: ["podium_records_rejected_total", "reason"],
    RecordsLate: ["podium_records_late_total", "result"],
    RecordsQuarantined: ["podium_records_quarantined_total", "reason"],
    SampleConflicts: ["podium_sample_conflicts_total", "kept"],
    MessagesBuilt: "podium_messages_built_total",
    OutboxPauses: "podium_outbox_pauses_total",
    KinesisErrors: ["podium_kinesis_errors_total", "cause"],
    PublishSent: "podium_publish_sent_total",
    PublishResent: "podium_publish_resent_total",
    PublishAcked: "podium_publish_acked_total",
    PublishFailures: ["podium_publish_failures_total", "cause"],
    PublishConnections: "podium_publish_connections_total",
};
const GAUGES = {
    OutboxDepth: "podium_outbox_depth",
    PublishPending: "podium_publish_pending",
};
// Families of /metrics that the EMF lines leave out on purpose: call
// counts grow on every poll, record_outcomes_total repeats the late,
// quarantined and conflict counts, the histogram becomes CommitLatency and
// BatchesCommitted, and ready becomes Ready.
const NOT_IN_EMF = new Set([
    "podium_kinesis_get_records_calls_total",
    "podium_kinesis_list_shards_calls_total",
    "podium_record_outcomes_total",
    "podium_batch_commit_duration_seconds",
    "podium_batches_committed_total",
    "podium_ready",
    "podium_shard_millis_behind_latest",
]);

function seriesOf(name) {
    const dot = name.indexOf(".");
    const family = dot < 0 ? name : name.slice(0, dot);
    const target = COUNTERS[family] ?? GAUGES[family];
    if (target === undefined) return null;
    if (typeof target === "string") return dot < 0 ? target : null;
    if (dot < 0) return null;
    return `${target[0]}{${target[1]}="${name.slice(dot + 1)}"}`;
}

// The samples of a /metrics body by series.
const metrics = new Map();
for (const line of readFileSync(metricsFile, "utf8").split("\n")) {
    const m = /^([^#\s]\S*) (\S+)$/.exec(line);
    if (m) metrics.set(m[1], Number(m[2]));
}

const lines = readFileSync(emfFile, "utf8").split("\n").filter((l) => l !== "");
if (lines.length < 2) problem(`${emfFile} has ${lines.length} lines, expected at least 2`);

const sums = new Map();
const lastGauge = new Map();
const lastShard = new Map();
let readyLines = 0;
let latencyLines = 0;
lines.forEach((text, i) => {
    const where = `${emfFile} line ${i + 1}`;
    let doc;
    try {
        doc = JSON.parse(text);
    } catch (e) {
        problem(`${where} is not JSON (${e.message}): ${text.slice(0, 200)}`);
        return;
    }
    const directives = checkStructure(doc, where);
    if (directives === null || directives.length !== 1) return;
    const [directive] = directives;
    if (doc.Stream !== stream) problem(`${where}: Stream is ${JSON.stringify(doc.Stream)}, expected ${JSON.stringify(stream)}`);
    const dimensions = JSON.stringify(directive.Dimensions);
    if (dimensions === '[["Stream","ShardId"]]') {
        if (directive.Metrics.length !== 1 || directive.Metrics[0].Name !== "MillisBehindLatest" || directive.Metrics[0].Unit !== "Milliseconds") {
            problem(`${where}: a shard line must have the one metric MillisBehindLatest in Milliseconds`);
        }
        if (!shards.includes(doc.ShardId)) problem(`${where}: unknown ShardId ${JSON.stringify(doc.ShardId)}`);
        lastShard.set(doc.ShardId, doc.MillisBehindLatest);
        return;
    }
    if (dimensions !== '[["Stream"]]') {
        problem(`${where}: Dimensions ${dimensions}, expected [["Stream"]] or [["Stream","ShardId"]]`);
        return;
    }
    for (const { Name: name, Unit: unit } of directive.Metrics) {
        const value = doc[name];
        if (name === "Ready") {
            if (value !== 0 && value !== 1) problem(`${where}: Ready is ${value}, expected 0 or 1`);
            readyLines += value;
            continue;
        }
        if (name === "CommitLatency") {
            latencyLines++;
            if (unit !== "Milliseconds" || !(value >= 0) || !/^[0-9]+(\.[0-9]{1,3})?$/.test(String(value))) {
                problem(`${where}: CommitLatency ${value} ${unit} is not a number of milliseconds with at most 3 decimals`);
            }
            continue;
        }
        if (name === "BatchesCommitted") {
            sums.set(name, (sums.get(name) ?? 0) + value);
            continue;
        }
        const series = seriesOf(name);
        if (series === null) {
            problem(`${where}: the metric ${name} has no /metrics sample to compare with`);
            continue;
        }
        if (unit !== "Count") problem(`${where}: ${name} has the unit ${unit}, expected Count`);
        if (!Number.isInteger(value) || value < 0) problem(`${where}: ${name} is ${value}, expected a count`);
        if (GAUGES[name] !== undefined) lastGauge.set(name, value);
        else sums.set(name, (sums.get(name) ?? 0) + value);
    }
});

for (const [name, sum] of sums) {
    if (name === "BatchesCommitted") {
        const committed = metrics.get("podium_batches_committed_total");
        if (!(sum >= committed)) problem(`BatchesCommitted adds up to ${sum} over the lines, less than the ${committed} of /metrics before the stop`);
        continue;
    }
    const series = seriesOf(name);
    if (!metrics.has(series)) problem(`/metrics has no sample ${series} for the EMF metric ${name}`);
    else if (metrics.get(series) !== sum) problem(`${name} adds up to ${sum} over the lines, /metrics has ${series} ${metrics.get(series)}`);
}
for (const [name, value] of lastGauge) {
    const series = GAUGES[name];
    if (metrics.get(series) !== value) problem(`the last ${name} is ${value}, /metrics has ${series} ${metrics.get(series)}`);
}
// Every sample of /metrics outside NOT_IN_EMF has an EMF metric.
const covered = new Set([...sums.keys(), ...lastGauge.keys()].map(seriesOf));
for (const series of metrics.keys()) {
    const family = series.replace(/\{.*$/, "").replace(/_(bucket|sum|count)$/, "");
    if (NOT_IN_EMF.has(family) || NOT_IN_EMF.has(series.replace(/\{.*$/, ""))) continue;
    if (!covered.has(series)) problem(`the /metrics sample ${series} has no EMF metric`);
}
for (const shard of shards) {
    const series = `podium_shard_millis_behind_latest{shard_id="${shard}"}`;
    if (!lastShard.has(shard)) problem(`no line has MillisBehindLatest of ${shard}`);
    else if (metrics.get(series) !== lastShard.get(shard)) problem(`the last MillisBehindLatest of ${shard} is ${lastShard.get(shard)}, /metrics has ${metrics.get(series)}`);
}
if (readyLines === 0) problem("no line has Ready 1");
if (latencyLines === 0 && sums.get("BatchesCommitted") > 0) problem("no line has CommitLatency, although jobs were committed");

if (problems.length > 0) {
    console.error(problems.join("\n"));
    process.exit(1);
}
console.log(`${lines.length} EMF lines match the specification and /metrics: ${[...sums].map(([n, v]) => `${n} ${v}`).join(", ")}`);
