#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""Counts individual test cases across meson test runs and extra checks.

Usage: test-summary.py [--checks FILE] BUILDDIR...

Reads BUILDDIR/meson-logs/testlog.json. TAP tests count their top-level `ok`/`not ok` lines;
the pytest suites count the cases of their JUnit files; any other test counts as one case.
A test whose process failed counts one more failure if its cases did not already show one
(a crash after the last case must not pass silently). The checks file holds lines
`pass|fail NAME`. Prints a table and ends with the line `N passed, N failed[, N skipped]`.
Exit status 0 only if nothing failed and something ran.
"""
import json
import os
import re
import sys
import xml.etree.ElementTree as ET

TAP_LINE = re.compile(r"^(not ok|ok)\b(.*)$")


def count_tap(stdout):
    p = f = s = 0
    for line in stdout.splitlines():
        m = TAP_LINE.match(line)
        if not m:
            continue
        if m.group(1) == "ok":
            if re.search(r"#\s*SKIP", m.group(2), re.I):
                s += 1
            else:
                p += 1
        else:
            if re.search(r"#\s*TODO", m.group(2), re.I):
                continue
            f += 1
    return p, f, s


def count_junit(path):
    p = f = s = 0
    root = ET.parse(path).getroot()
    for case in root.iter("testcase"):
        kinds = {c.tag for c in case}
        if "failure" in kinds or "error" in kinds:
            f += 1
        elif "skipped" in kinds:
            s += 1
        else:
            p += 1
    return p, f, s


def main(argv):
    checks = None
    dirs = []
    it = iter(argv)
    for a in it:
        if a == "--checks":
            checks = next(it)
        else:
            dirs.append(a)
    total = [0, 0, 0]
    rows = []
    for d in dirs:
        log = os.path.join(d, "meson-logs", "testlog.json")
        if not os.path.exists(log):
            rows.append((d, "(no test log)", 0, 1, 0))
            total[1] += 1
            continue
        for line in open(log):
            t = json.loads(line)
            name = t["name"].split(" / ")[-1]
            result = t.get("result", "")
            junit = os.path.join(d, "meson-logs", f"junit-{name}.xml")
            if os.path.exists(junit) and name in ("integration", "stress", "sdk"):
                p, f, s = count_junit(junit)
            else:
                p, f, s = count_tap(t.get("stdout", ""))
                if p + f + s == 0:
                    if result == "SKIP":
                        s = 1
                    elif result in ("OK", "EXPECTEDFAIL"):
                        p = 1
            if result not in ("OK", "SKIP", "EXPECTEDFAIL") and f == 0:
                f += 1
            rows.append((os.path.basename(d.rstrip("/")), name, p, f, s))
            total[0] += p
            total[1] += f
            total[2] += s
    if checks and os.path.exists(checks):
        for line in open(checks):
            parts = line.split(None, 1)
            if len(parts) != 2:
                continue
            ok = parts[0] == "pass"
            rows.append(("checks", parts[1].strip(), int(ok), int(not ok), 0))
            total[0 if ok else 1] += 1
    width = max([len(f"{r[0]}/{r[1]}") for r in rows] + [10])
    print()
    print(f"{'suite':<{width}}  passed  failed  skipped")
    for r in rows:
        print(f"{r[0] + '/' + r[1]:<{width}}  {r[2]:>6}  {r[3]:>6}  {r[4]:>7}")
    print()
    line = f"{total[0]} passed, {total[1]} failed"
    if total[2]:
        line += f", {total[2]} skipped"
    print(line)
    return 0 if total[1] == 0 and total[0] > 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
