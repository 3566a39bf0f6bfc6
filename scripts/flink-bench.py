#!/usr/bin/env python3
"""Apache Flink on the backlog benchmark's IoT readings, for docs/performance.md.

PyFlink's bundled engine (pip install apache-flink; Java 17) has no Kafka connector here, so it
reads the same readings from a JSON-lines file, which favours it (no consumer, no producer):

    SLUICE_BENCH_RECORDS=1000000 SLUICE_BENCH_WRITE_JSONL=/tmp/readings.jsonl \\
        cargo bench -p pipeline-runtime --bench backlog
    python3 scripts/flink-bench.py /tmp/readings.jsonl 1000000

The job is the IoT windowed job at parallelism 1: event time from `ts` with a 5 s watermark
delay, 1-minute tumbling windows per device, count / avg / min / max of temperature, into a
blackhole sink. Printed: records per CPU-second of the Flink JVM and this Python process during
the job (JVM start excluded), and the same with the start included.
"""

import os
import sys
import time

from pyflink.table import EnvironmentSettings, TableEnvironment

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def descendants(pid):
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        if ppid == pid:
            children.append(int(entry))
            children.extend(descendants(int(entry)))
    return children


def total_cpu():
    me = os.getpid()
    return sum(cpu_seconds(p) for p in [me] + descendants(me) if os.path.exists(f"/proc/{p}"))


def main():
    path, records = sys.argv[1], int(sys.argv[2])
    start_all = total_cpu()
    settings = EnvironmentSettings.in_streaming_mode()
    env = TableEnvironment.create(settings)
    env.get_config().set("parallelism.default", "1")
    env.execute_sql(f"""
        CREATE TABLE readings (
            device_id STRING, ts BIGINT, temperature DOUBLE,
            rt AS TO_TIMESTAMP_LTZ(ts, 3),
            WATERMARK FOR rt AS rt - INTERVAL '5' SECOND
        ) WITH ('connector' = 'filesystem', 'path' = '{path}', 'format' = 'json',
                'json.ignore-parse-errors' = 'true')
    """)
    env.execute_sql("""
        CREATE TABLE windows (
            device_id STRING, window_start TIMESTAMP(3), window_end TIMESTAMP(3),
            readings BIGINT, avg_temperature DOUBLE, min_temperature DOUBLE,
            max_temperature DOUBLE
        ) WITH ('connector' = 'blackhole')
    """)
    before = total_cpu()
    started = time.time()
    env.execute_sql("""
        INSERT INTO windows
        SELECT device_id, window_start, window_end, COUNT(*), AVG(temperature),
               MIN(temperature), MAX(temperature)
        FROM TABLE(TUMBLE(TABLE readings, DESCRIPTOR(rt), INTERVAL '1' MINUTE))
        GROUP BY device_id, window_start, window_end
    """).wait()
    wall = time.time() - started
    after = total_cpu()
    job_cpu = after - before
    print(f"flink 2.3 (PyFlink bundled engine), parallelism 1, {records} readings from {path}")
    print(f"job: {wall:.1f} s wall, {job_cpu:.1f} CPU-s: {records / job_cpu:,.0f} records per CPU-second, {records / wall:,.0f} per wall second")
    print(f"with JVM start: {after - start_all:.1f} CPU-s: {records / (after - start_all):,.0f} records per CPU-second")


if __name__ == "__main__":
    main()
