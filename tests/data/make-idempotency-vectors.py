#!/usr/bin/env python3
"""Write tests/data/idempotency-vectors.txt, the pinned payload hashes.

Each vector is a JSON record and the SHA-256 of its canonical form, computed
here without the C code, so test_idem_key checks idem_payload_hash against
an independent implementation of the canonical rules:

  - no whitespace between tokens;
  - object members sorted by the UTF-8 bytes of their names, a prefix
    before the longer name;
  - numbers by value: 0 for any zero, else an optional '-', the significant
    digits without leading or trailing zeros, 'e' and the decimal exponent
    of the last digit (90, 90.0 and 9.0e1 give 9e1, 12.5 gives 125e-1);
  - strings as UTF-8 with only '"', '\\' and bytes below 0x20 escaped, the
    latter as \\u00xx in lower-case hex.

Usage: make-idempotency-vectors.py [--check]. Without arguments it rewrites
the vectors file next to this script. With --check it exits with status 1
when the file differs from what it would write.
"""

import decimal
import hashlib
import json
import pathlib
import sys

RECORD_A = (
    '{"uuid":"u-0901","event":"update","deviceTimestamp":1767225609000,'
    '"second":9,"raceId":"R-7","name":"Racer 11","racerId":"rc-11",'
    '"classId":"B","cadence":90,"resistance":12.5}'
)

# (name, JSON text). The JSON text must not contain a line feed except in
# record-a-whitespace, whose extra lines the file stores as continuation
# lines.
VECTORS = [
    ("record-a", RECORD_A),
    (
        "record-a-reversed",
        '{"resistance":12.5,"cadence":90,"classId":"B","racerId":"rc-11",'
        '"name":"Racer 11","raceId":"R-7","second":9,'
        '"deviceTimestamp":1767225609000,"event":"update","uuid":"u-0901"}',
    ),
    (
        "record-a-number-forms",
        '{"uuid":"u-0901","event":"update","deviceTimestamp":1.767225609e12,'
        '"second":9,"raceId":"R-7","name":"Racer 11","racerId":"rc-11",'
        '"classId":"B","cadence":9.0e1,"resistance":12.50}',
    ),
    (
        "record-a-whitespace",
        '{\n  "uuid" : "u-0901",\n\t"event":\t"update" ,\n'
        '  "deviceTimestamp": 1767225609000,\n  "second": 9,\n'
        '  "raceId": "R-7",  "name": "Racer 11",\n'
        '  "racerId": "rc-11", "classId": "B",\n'
        '  "cadence": 90, "resistance": 12.5\n}',
    ),
    (
        "record-a-escaped-strings",
        '{"uuid":"u-0901","event":"upd\\u0061te","deviceTimestamp":'
        '1767225609000,"second":9,"raceId":"R\\u002d7","name":"Racer\\u002011",'
        '"racerId":"rc\\u002d11","classId":"\\u0042",'
        '"cadence":90,"resistance":12.5}',
    ),
    (
        "record-b",
        '{"uuid":"u-0901","event":"update","deviceTimestamp":1767225609000,'
        '"second":9,"raceId":"R-7","name":"Racer 11","racerId":"rc-11",'
        '"classId":"B","cadence":91,"resistance":12.5}',
    ),
    (
        "nested-objects",
        '{"uuid":"u-0902","device":{"id":"d-1","firmware":{"major":2,'
        '"minor":0,"tags":{"z":true,"a":false}}},"position":{"lat":51.5,'
        '"lon":-0.12}}',
    ),
    (
        "nested-objects-reordered",
        '{"position":{"lon":-0.120,"lat":5.15e1},"device":{"firmware":'
        '{"tags":{"a":false,"z":true},"minor":0.0,"major":2},"id":"d-1"},'
        '"uuid":"u-0902"}',
    ),
    (
        "arrays",
        '{"uuid":"u-0903","splits":[1,2.5,[],{},[null,true,false],'
        '[{"b":1,"a":2}]],"empty":[]}',
    ),
    (
        "arrays-reversed-elements",
        '{"uuid":"u-0903","splits":[[{"b":1,"a":2}],[null,true,false],{},[],'
        '2.5,1],"empty":[]}',
    ),
    (
        "unicode-names",
        '{"uuid":"u-0904","name":"Zoë Ōtsuka 🚴","team":"Ελλάδα",'
        '"city":"東京"}',
    ),
    (
        "unicode-names-escaped",
        '{"uuid":"u-0904","name":"Zo\\u00eb \\u014ctsuka \\ud83d\\udeb4",'
        '"team":"\\u0395\\u03bb\\u03bb\\u03ac\\u03b4\\u03b1",'
        '"city":"\\u6771\\u4eac"}',
    ),
    # UTF-8 byte order and UTF-16 code unit order differ here: U+FB01 sorts
    # before U+1F6B4 by UTF-8 bytes (ef < f0) but after it by UTF-16 units
    # (fb01 > d83d). Upper case sorts before lower case, and a name sorts
    # before the longer names it is a prefix of.
    (
        "member-order",
        '{"\\ufb01":1,"🚴":2,"é":3,"z":4,"Z":5,"a":6,"aa":7,"a\\u0000":8,'
        '"":9}',
    ),
    ("string-with-nul", '{"uuid":"u-1302\\u0000a"}'),
    ("string-prefix-of-nul", '{"uuid":"u-1302"}'),
    (
        "control-characters",
        '{"note":"tab\\there\\nline\\r\\b\\f\\u001f\\u007f \\"quoted\\" '
        'back\\\\slash \\/ slash"}',
    ),
    (
        "zero-forms",
        '{"a":0,"b":-0,"c":0.0,"d":0e5,"e":-0.0E-3,"f":0.000}',
    ),
    ("zero-forms-plain", '{"a":0,"b":0,"c":0,"d":0,"e":0,"f":0}'),
    (
        "negative-numbers",
        '{"a":-1,"b":-12.50,"c":-1e-7,"d":-100,"e":-0.001,"f":-1.5E+3}',
    ),
    (
        "negative-numbers-other-forms",
        '{"a":-1.0,"b":-125e-1,"c":-0.0000001,"d":-1e2,"e":-1e-3,'
        '"f":-1500}',
    ),
    ("large-integer", '{"big":18446744073709551616}'),
    ("large-integer-exponent", '{"big":1.8446744073709551616e19}'),
    ("large-integer-plus-one", '{"big":18446744073709551617}'),
    # Selections as idem_payload_hash digests them: [raceId, uuid] of A, and
    # a missing selection, which hashes as null.
    ("selection-race-uuid", '["R-7","u-0901"]'),
    ("selection-missing", "null"),
]

# Vectors that must share a digest with the first one of their group.
EQUAL_GROUPS = [
    [
        "record-a",
        "record-a-reversed",
        "record-a-number-forms",
        "record-a-whitespace",
        "record-a-escaped-strings",
    ],
    ["nested-objects", "nested-objects-reordered"],
    ["unicode-names", "unicode-names-escaped"],
    ["zero-forms", "zero-forms-plain"],
    ["negative-numbers", "negative-numbers-other-forms"],
    ["large-integer", "large-integer-exponent"],
]

# Pairs of vectors whose digests must differ.
DIFFERENT_PAIRS = [
    ("record-a", "record-b"),
    ("arrays", "arrays-reversed-elements"),
    ("string-with-nul", "string-prefix-of-nul"),
    ("large-integer", "large-integer-plus-one"),
]

HEADER = """\
# Pinned SHA-256 digests of canonical JSON, checked by tests/test_idem_key.c.
# Written by make-idempotency-vectors.py, which computes them without the C
# code: edit the script and rerun it, never this file by hand.
#
# Format: one vector per line, "name<TAB>sha256-hex<TAB>json". The json is
# the rest of the line, tabs included. A line that starts with a TAB
# continues the json of the vector above: the json gets a line feed and
# then the rest of that line after its first TAB. Lines starting with '#'
# and empty lines are comments.
#
# The digest is the SHA-256 of the record's canonical form:
#   - no whitespace between tokens;
#   - object members sorted by the UTF-8 bytes of their names, a prefix
#     before the longer name (not by UTF-16 units);
#   - numbers by value: "0" for any zero (-0 and 0e5 included), else an
#     optional '-', the significant digits without leading or trailing
#     zeros, 'e' and the decimal exponent. So 90, 90.0 and 9.0e1 give
#     "9e1", 12.5 gives "125e-1", and 18446744073709551616 gives
#     "18446744073709551616e0";
#   - strings as UTF-8 with only '"', '\\\\' and bytes below 0x20 escaped,
#     the latter as \\u00xx in lower-case hex ("\\u0000" stays escaped, so
#     "u-1302\\u0000a" differs from "u-1302"), every other character raw;
#   - arrays keep their order.
"""


class Number:
    """A JSON number kept as its source text, so no precision is lost."""

    def __init__(self, text):
        self.text = text


class Object:
    """A JSON object as its (name, value) pairs in document order."""

    def __init__(self, pairs):
        self.pairs = pairs


def canonical_number(text):
    sign, digits, exponent = decimal.Decimal(text).as_tuple()
    digits = "".join(map(str, digits)).lstrip("0")
    if not digits:
        return "0"
    stripped = digits.rstrip("0")
    exponent += len(digits) - len(stripped)
    return ("-" if sign else "") + stripped + "e" + str(exponent)


def canonical_string(text):
    out = bytearray(b'"')
    for byte in text.encode("utf-8"):
        if byte in (0x22, 0x5C):
            out += b"\\" + bytes([byte])
        elif byte < 0x20:
            out += b"\\u%04x" % byte
        else:
            out.append(byte)
    out += b'"'
    return bytes(out)


def canonical(value):
    if value is None:
        return b"null"
    if value is True:
        return b"true"
    if value is False:
        return b"false"
    if isinstance(value, Number):
        return canonical_number(value.text).encode("ascii")
    if isinstance(value, str):
        return canonical_string(value)
    if isinstance(value, list):
        return b"[" + b",".join(canonical(v) for v in value) + b"]"
    members = sorted(value.pairs, key=lambda pair: pair[0].encode("utf-8"))
    return (
        b"{"
        + b",".join(canonical_string(k) + b":" + canonical(v) for k, v in members)
        + b"}"
    )


def make_object(pairs):
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise ValueError("duplicate member name in %r" % names)
    return Object(pairs)


def reject_constant(name):
    """Reject NaN and Infinity, which JSON does not allow."""
    raise ValueError("invalid number " + name)


def parse(text):
    return json.loads(
        text,
        object_pairs_hook=make_object,
        parse_int=Number,
        parse_float=Number,
        parse_constant=reject_constant,
    )


def digest(text):
    return hashlib.sha256(canonical(parse(text))).hexdigest()


def render():
    lines = [HEADER]
    digests = {}
    for name, text in VECTORS:
        digests[name] = digest(text)
        first, *rest = text.split("\n")
        lines.append("%s\t%s\t%s\n" % (name, digests[name], first))
        lines.extend("\t%s\n" % line for line in rest)
    check_groups(digests)
    return "".join(lines)


def check_groups(digests):
    for group in EQUAL_GROUPS:
        for name in group[1:]:
            if digests[name] != digests[group[0]]:
                sys.exit("%s and %s must share a digest" % (group[0], name))
    for first, second in DIFFERENT_PAIRS:
        if digests[first] == digests[second]:
            sys.exit("%s and %s must differ" % (first, second))


def main():
    path = pathlib.Path(__file__).with_name("idempotency-vectors.txt")
    text = render()
    if sys.argv[1:] == ["--check"]:
        if path.read_text(encoding="utf-8") != text:
            sys.exit("%s is out of date: run %s" % (path, sys.argv[0]))
        return
    path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
