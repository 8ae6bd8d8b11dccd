// Tests of the leaderboard rules in checker.mjs on hand-computed cases, so
// that a mistake in the checker cannot pass or fail the end-to-end tests
// unnoticed. Run with `node --test tests/e2e/checker.test.mjs`.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  alleycatMessages,
  alleycatShapeProblem,
  buildClassBoards,
  buildClassLeaderboard,
  buildLeaderboard,
  buildRaces,
  buildResults,
  compareCaptures,
  computeOutput4,
  formatUnits4,
  parseDecimal,
  toUnits4,
  verify,
  verifyAlleycat,
} from './checker.mjs';

// Builds one shard from record objects; `raw` overrides the JSON text.
function shardOf(shardId, records) {
  return {
    shardId,
    records: records.map((record, index) => ({
      shardId,
      sequenceNumber: BigInt(1000 + index),
      arrivalMs: record.arrivalMs ?? 1000 + index,
      data: record.raw ?? JSON.stringify(record.fields),
    })),
  };
}

function sample(fields) {
  return {
    fields: {
      uuid: `u-${fields.racerId}-${fields.second}`,
      event: 'update',
      deviceTimestamp: 1700000000000 + fields.second * 1000,
      raceId: 1,
      name: `Rider ${fields.racerId}`,
      classId: 1,
      cadence: 90,
      resistance: 0,
      ...fields,
    },
  };
}

function outputOf(cadence, resistance) {
  return formatUnits4(computeOutput4(parseDecimal(cadence), parseDecimal(resistance)));
}

test('output formula exact values', () => {
  assert.equal(outputOf('90', '0'), '81.25');
  assert.equal(outputOf('0', '0'), '22.75');
  assert.equal(outputOf('1.00005', '35'), '36.0001');
  assert.equal(outputOf('0.00004', '0'), '22.75');
  assert.equal(outputOf('9.0e1', '0.0'), '81.25');
  // (10.12 + 35) x (41.3 + 65) / 100 = 45.12 x 106.3 / 100 = 47.96256 -> 47.9626
  assert.equal(outputOf('10.12', '41.3'), '47.9626');
});

test('rounding half up to 4 decimals', () => {
  assert.equal(toUnits4(parseDecimal('1.00005')), 10001n);
  assert.equal(toUnits4(parseDecimal('1.00004999')), 10000n);
  assert.equal(toUnits4(parseDecimal('2.5e-4')), 3n);
  assert.equal(toUnits4(parseDecimal('120')), 1200000n);
});

test('number formatting without trailing zeros', () => {
  assert.equal(formatUnits4(1653120n), '165.312');
  assert.equal(formatUnits4(227500n), '22.75');
  assert.equal(formatUnits4(70000n), '7');
  assert.equal(formatUnits4(1n), '0.0001');
  assert.equal(formatUnits4(0n), '0');
});

test('leaderboard message bytes', () => {
  const shard = shardOf('shardId-000000000000', [
    { ...sample({ racerId: 2, second: 1, name: 'Bo "B" \\', cadence: 90, resistance: 0 }), arrivalMs: 5000 },
    { ...sample({ racerId: 1, second: 1, name: 'Ada', cadence: 0, resistance: 0 }), arrivalMs: 5001 },
    { ...sample({ racerId: 1, second: 2, name: 'Ada', cadence: 90, resistance: 0, classId: 'c2' }), arrivalMs: 5002 },
  ]);
  const { races } = buildRaces([shard]);
  const race = races.get('1');

  assert.equal(
    buildLeaderboard(race, 1, 0),
    '{"type":"leaderboard","raceId":1,"second":1,"revision":0,"ts":5001,"entries":[' +
      '{"rank":1,"racerId":2,"name":"Bo \\"B\\" \\\\","classId":1,"second":1,"cadence":90,"resistance":0,"output":81.25,"total":81.25},' +
      '{"rank":2,"racerId":1,"name":"Ada","classId":1,"second":1,"cadence":0,"resistance":0,"output":22.75,"total":22.75}]}',
  );
  // Racer 2 has no sample at second 2, so its entry keeps second 1.
  assert.equal(
    buildLeaderboard(race, 2, 3),
    '{"type":"leaderboard","raceId":1,"second":2,"revision":3,"ts":5002,"entries":[' +
      '{"rank":1,"racerId":1,"name":"Ada","classId":"c2","second":2,"cadence":90,"resistance":0,"output":81.25,"total":104},' +
      '{"rank":2,"racerId":2,"name":"Bo \\"B\\" \\\\","classId":1,"second":1,"cadence":90,"resistance":0,"output":81.25,"total":81.25}]}',
  );
});

test('equal totals share a rank', () => {
  const shard = shardOf('shardId-000000000000', [
    sample({ racerId: 'b', second: 1, cadence: 90 }),
    sample({ racerId: 'a', second: 1, cadence: 10 }),
    sample({ racerId: 7, second: 1, cadence: 10 }),
    sample({ racerId: 10, second: 1, cadence: 10 }),
    sample({ racerId: 3, second: 1, cadence: 0 }),
  ]);
  const { races } = buildRaces([shard]);
  const message = JSON.parse(buildLeaderboard(races.get('1'), 1, 0));
  const ranks = message.entries.map((entry) => [entry.rank, entry.racerId]);
  // Ties list numbers by value before strings.
  assert.deepEqual(ranks, [
    [1, 'b'],
    [2, 7],
    [2, 10],
    [2, 'a'],
    [5, 3],
  ]);
});

test('top 100 entries only', () => {
  const records = [];
  for (let racerId = 1; racerId <= 105; racerId += 1) {
    records.push(sample({ racerId, second: 1, cadence: racerId }));
  }
  const { races } = buildRaces([shardOf('shardId-000000000000', records)]);
  const message = JSON.parse(buildLeaderboard(races.get('1'), 1, 0));
  assert.equal(message.entries.length, 100);
  assert.equal(message.entries[0].racerId, 105);
  assert.equal(message.entries[99].racerId, 6);
});

test('duplicate uuid keeps first copy', () => {
  const first = sample({ racerId: 1, second: 1, cadence: 90 });
  const copy = { ...first, arrivalMs: 9000 };
  const { races, stats } = buildRaces([shardOf('shardId-000000000000', [first, copy])]);
  assert.equal(stats.duplicateUuids, 1);
  const message = JSON.parse(buildLeaderboard(races.get('1'), 1, 0));
  assert.equal(message.ts, 1000);
});

test('conflict smaller device time wins', () => {
  const late = sample({ racerId: 1, second: 1, cadence: 90, deviceTimestamp: 5, uuid: 'x' });
  const early = sample({ racerId: 1, second: 1, cadence: 10, deviceTimestamp: 4, uuid: 'y' });
  const tieLoser = sample({ racerId: 1, second: 1, cadence: 20, deviceTimestamp: 4, uuid: 'z' });
  const same = sample({ racerId: 1, second: 1, cadence: '10.0', deviceTimestamp: 3, uuid: 'w' });
  same.raw = JSON.stringify(same.fields).replace('"10.0"', '10.0');
  const { races, stats } = buildRaces([
    shardOf('shardId-000000000000', [late, early, tieLoser, same]),
  ]);
  assert.equal(stats.conflicts, 2);
  assert.equal(stats.unchanged, 1);
  const message = JSON.parse(buildLeaderboard(races.get('1'), 1, 0));
  assert.equal(message.entries[0].cadence, 10);
  // ts comes from the kept sample (the second record), not from the others.
  assert.equal(message.ts, 1001);
});

test('integer ids keep every digit', () => {
  const record = sample({ racerId: 1, second: 1 });
  record.raw = JSON.stringify(record.fields).replace('"raceId":1', '"raceId":9007199254740993');
  const { races } = buildRaces([shardOf('shardId-000000000000', [record])]);
  assert.ok(races.has('9007199254740993'));
});

test('verify reports a wrong total', () => {
  const { races } = buildRaces([
    shardOf('shardId-000000000000', [sample({ racerId: 1, second: 1 })]),
  ]);
  const good = buildLeaderboard(races.get('1'), 1, 0);
  const topic = 'podium/races/1/leaderboard';
  // The results and the class board are right, so only the leaderboards
  // under test can fail.
  const others = [
    { kind: 'results', topic: 'podium/races/1/results', payload: buildResults(races.get('1'), 0) },
    {
      kind: 'class',
      topic: 'podium/classes/1/leaderboard',
      payload: buildClassLeaderboard(buildClassBoards(races).get('1'), 0),
    },
  ];
  const capture = (payloads) => ({
    messages: [
      ...payloads.map((payload, index) => ({
        line: index + 1,
        topic,
        payload,
        second: 1,
        revision: Number(/"revision":(\d+)/.exec(payload)[1]),
      })),
      ...others.map((other, index) => ({ line: 100 + index, revision: 0, ...other })),
    ],
    otherTopics: 0,
  });

  assert.deepEqual(verify(races, capture([good]), 1).failures, []);
  const wrong = good.replace('"total":81.25', '"total":81.2');
  assert.equal(verify(races, capture([wrong]), 1).failures.length, 1);
  const revised = good.replace('"revision":0', '"revision":1');
  assert.deepEqual(verify(races, capture([wrong, revised]), 1).failures, []);
  assert.equal(verify(races, capture([revised, good]), 1).failures.length, 1);
  assert.equal(verify(races, capture([]), 1).failures.length, 1);
});

// Outputs at resistance 0, (cadence + 35) x 65 / 100: cadence 90 -> 81.25,
// 10 -> 29.25, 0 -> 22.75.
test('results mark final riders', () => {
  const shard = shardOf('shardId-000000000000', [
    { ...sample({ racerId: 7, second: 1, cadence: 90 }), arrivalMs: 5000 },
    { ...sample({ racerId: 'b', second: 1, cadence: 10, event: 'final' }), arrivalMs: 5001 },
    { ...sample({ racerId: 7, second: 2, cadence: 0, event: 'final' }), arrivalMs: 5002 },
    { ...sample({ racerId: 'b', second: 2, cadence: 0 }), arrivalMs: 5003 },
    { ...sample({ racerId: 3, second: 1, cadence: 0 }), arrivalMs: 5004 },
  ]);
  const { races } = buildRaces([shard]);
  assert.equal(
    buildResults(races.get('1'), 2),
    '{"type":"results","raceId":1,"second":2,"revision":2,"ts":5004,"entries":[' +
      '{"rank":1,"racerId":7,"name":"Rider 7","classId":1,"second":2,"cadence":0,"resistance":0,' +
      '"output":22.75,"total":104,"final":true,"finalOutput":22.75},' +
      '{"rank":2,"racerId":"b","name":"Rider b","classId":1,"second":2,"cadence":0,"resistance":0,' +
      '"output":22.75,"total":52,"final":true,"finalOutput":29.25},' +
      '{"rank":3,"racerId":3,"name":"Rider 3","classId":1,"second":1,"cadence":0,"resistance":0,' +
      '"output":22.75,"total":22.75,"final":false,"finalOutput":22.75}]}',
  );
});

test('class best keeps greater or earlier', () => {
  const shard = shardOf('shardId-000000000000', [
    // Race 2 has the greater total for rider 7 in class 1.
    { ...sample({ raceId: 1, racerId: 7, second: 1, cadence: 10, uuid: 'r1' }), arrivalMs: 1000 },
    { ...sample({ raceId: 2, racerId: 7, second: 1, cadence: 90, name: 'Ann B', uuid: 'r2' }), arrivalMs: 2000 },
    // Equal totals: race 4 has the smaller ts, so it beats race 3.
    { ...sample({ raceId: 3, racerId: 8, second: 1, cadence: 90, uuid: 'r3' }), arrivalMs: 3000 },
    { ...sample({ raceId: 4, racerId: 8, second: 1, cadence: 90, name: 'Early', uuid: 'r4' }), arrivalMs: 2500 },
    // Rider 9's last sample in race 5 is in class "c".
    { ...sample({ raceId: 5, racerId: 9, second: 1, cadence: 0 }), arrivalMs: 4000 },
    { ...sample({ raceId: 5, racerId: 9, second: 2, cadence: 0, classId: 'c' }), arrivalMs: 4001 },
  ]);
  const { races } = buildRaces([shard]);
  const boards = buildClassBoards(races);
  assert.deepEqual([...boards.keys()], ['1', '"c"']);
  assert.equal(
    buildClassLeaderboard(boards.get('1'), 1),
    '{"type":"class-leaderboard","classId":1,"revision":1,"ts":2500,"entries":[' +
      '{"rank":1,"racerId":7,"name":"Ann B","raceId":2,"total":81.25},' +
      '{"rank":1,"racerId":8,"name":"Early","raceId":4,"total":81.25}]}',
  );
  assert.equal(
    buildClassLeaderboard(boards.get('"c"'), 0),
    '{"type":"class-leaderboard","classId":"c","revision":0,"ts":4001,"entries":[' +
      '{"rank":1,"racerId":9,"name":"Rider 9","raceId":5,"total":45.5}]}',
  );
});

test('verify checks results and class boards', () => {
  const { races } = buildRaces([
    shardOf('shardId-000000000000', [sample({ racerId: 1, second: 1 })]),
  ]);
  const race = races.get('1');
  const board = buildClassBoards(races).get('1');
  const message = (kind, topic, payload, line) => ({
    line,
    kind,
    topic,
    payload,
    second: 1,
    revision: Number(/"revision":(\d+)/.exec(payload)[1]),
  });
  const leaderboard = message('leaderboard', 'podium/races/1/leaderboard', buildLeaderboard(race, 1, 0), 1);
  const results = message('results', 'podium/races/1/results', buildResults(race, 0), 2);
  const classBoard = message('class', 'podium/classes/1/leaderboard', buildClassLeaderboard(board, 0), 3);
  const run = (messages) => verify(races, { messages, otherTopics: 0 }, 1).failures;

  assert.deepEqual(run([leaderboard, results, classBoard]), []);
  assert.equal(run([leaderboard, classBoard]).length, 1);
  assert.equal(run([leaderboard, results]).length, 1);
  const wrongFinal = { ...results, payload: results.payload.replace('"final":false', '"final":true') };
  assert.match(run([leaderboard, wrongFinal, classBoard])[0], /expected results for race 1/);
  const wrongRace = { ...classBoard, payload: classBoard.payload.replace('"raceId":1', '"raceId":2') };
  assert.match(run([leaderboard, results, wrongRace])[0], /expected leaderboard for class 1/);
  // A later revision with the right bytes settles an earlier wrong one.
  const fixed = { ...results, line: 4, revision: 1, payload: results.payload.replace('"revision":0', '"revision":1') };
  assert.deepEqual(run([leaderboard, wrongFinal, fixed, classBoard]), []);
  const unknown = { ...classBoard, topic: 'podium/classes/9/leaderboard' };
  assert.match(run([leaderboard, results, classBoard, unknown])[0], /names a class/);
});

// A leaderboard entry with only the members that alleycatMessages reads
// besides rank; the rest of the entry is the same for every rider here.
function boardEntry(rank, racerId, classId, output) {
  return (
    `{"rank":${rank},"racerId":${racerId},"name":"Rider","classId":${classId},"second":1,` +
    `"cadence":1,"resistance":1,"output":${output},"total":${output}}`
  );
}

const ALLEYCAT_BOARD =
  '{"type":"leaderboard","raceId":5402746,"second":1,"revision":0,"ts":1004,"entries":[' +
  [
    boardEntry(1, '7', '1', '81.25'),
    boardEntry(2, '"b"', '"A"', '47.9626'),
    boardEntry(3, '"q\\"x\\\\"', '"A"', '36.0001'),
    boardEntry(4, '12', '1', '22.75'),
  ].join(',') +
  ']}';

test('alleycat messages of a leaderboard', () => {
  // Written out by hand: class 1 before class "A", entries in leaderboard
  // order, the racerId q"x\ escaped once as a key and again in the string.
  assert.deepEqual(alleycatMessages(ALLEYCAT_BOARD), [
    '{"msg":"results","classId":"1","raceId":"race-5402746","ts":"1004",' +
      '"results":"{\\"7\\":81.25,\\"12\\":22.75}"}',
    '{"msg":"results","classId":"A","raceId":"race-5402746","ts":"1004",' +
      '"results":"{\\"b\\":47.9626,\\"q\\\\\\"x\\\\\\\\\\":36.0001}"}',
  ]);
  // The frontend reads classId with parseInt and results with JSON.parse.
  const [first, second] = alleycatMessages(ALLEYCAT_BOARD).map((payload) => JSON.parse(payload));
  assert.equal(parseInt(first.classId, 10), 1);
  assert.deepEqual(JSON.parse(first.results), { 7: 81.25, 12: 22.75 });
  assert.deepEqual(JSON.parse(second.results), { b: 47.9626, 'q"x\\': 36.0001 });
});

test('alleycat keeps the first of equal keys', () => {
  const board =
    '{"type":"leaderboard","raceId":"R-7","second":1,"revision":0,"ts":5,"entries":[' +
    [boardEntry(1, '"7"', '1', '81.25'), boardEntry(2, '7', '1', '22.75')].join(',') +
    ']}';
  assert.deepEqual(alleycatMessages(board), [
    '{"msg":"results","classId":"1","raceId":"race-R-7","ts":"5","results":"{\\"7\\":81.25}"}',
  ]);
});

test('alleycat shape as the frontend reads it', () => {
  const [good] = alleycatMessages(ALLEYCAT_BOARD);
  assert.equal(alleycatShapeProblem(good), null);
  assert.match(alleycatShapeProblem(good.replace('"classId":"1"', '"classId":1')), /classId is not a string/);
  assert.match(alleycatShapeProblem(good.replace('"classId":"1"', '"classId":"01"')), /parseInt/);
  assert.match(alleycatShapeProblem(good.replace('"msg":"results"', '"msg":"result"')), /msg is/);
  assert.match(alleycatShapeProblem(good.replace('"results":"{', '"results":"[').replace('}"}', ']"}')), /results/);
  assert.match(alleycatShapeProblem(good.replace('\\"7\\":81.25', '\\"7\\":\\"x\\"')), /not a finite number/);
});

test('alleycat messages follow their leaderboard', () => {
  const [first, second] = alleycatMessages(ALLEYCAT_BOARD);
  const at = (line, kind, topic, payload) => ({ line, kind, topic, payload });
  const board = at(1, 'leaderboard', 'podium/races/5402746/leaderboard', ALLEYCAT_BOARD);
  const run = (messages) => verifyAlleycat({ messages, otherTopics: 0 }).failures;
  const a = (line, payload) => at(line, 'alleycat', 'alleycat-subscribe', payload);

  assert.deepEqual(run([board, a(2, first), a(3, second)]), []);
  // A resend of the same bytes after a reconnect is allowed.
  assert.deepEqual(run([board, a(2, first), a(3, first), a(4, second)]), []);
  assert.match(run([board, a(2, first)])[0], /never arrived/);
  assert.match(run([board, a(2, second), a(3, first)])[0], /unexpected alleycat message/);
  assert.match(run([board, a(2, first), { ...board, line: 3 }])[0], /were missing/);
  assert.match(run([board, a(2, first.replace('81.25', '81.26')), a(3, second)])[0], /first difference/);
  assert.match(run([])[0], /no alleycat message/);
});

test('compare captures per topic', () => {
  const [first, second] = alleycatMessages(ALLEYCAT_BOARD);
  const at = (kind, topic, payload) => ({ line: 0, kind, topic, payload });
  const board = (n) => at('leaderboard', 'podium/races/1/leaderboard', `{"n":${n}}`);
  const other = at('leaderboard', 'podium/races/2/leaderboard', '{"n":9}');
  const a = (payload) => at('alleycat', 'alleycat-subscribe', payload);
  const run = (messages, reference) =>
    compareCaptures({ messages, otherTopics: 0 }, { messages: reference, otherTopics: 0 }).failures;
  const reference = [board(1), a(first), a(second), other, board(2)];

  assert.deepEqual(run(reference, reference), []);
  // Other topics may interleave differently; resends are left out.
  assert.deepEqual(run([other, board(1), a(second), a(first), board(1), board(2)], reference), []);
  assert.match(run([board(2), board(1), a(first), a(second), other], reference)[0], /differs/);
  assert.match(run([board(1), a(first), other, board(2)], reference)[0], /missing/);
  assert.match(run([...reference, board(3)], reference)[0], /more than the reference/);
});
