#!/usr/bin/env bash
# `make run-kafka`: the demo through a real Kafka-protocol broker (tansu). Starts the broker on
# loopback, produces the generated traffic to the source topics, ingests it into bronze as a
# consumer group (exactly once, offsets committed after each Delta commit), runs silver, gold and
# the federator, prints the reconciliation table and stops the broker.
set -euo pipefail
TANSU="${TANSU:?set TANSU to the tansu binary (make tansu installs it)}"
BIN="${BIN:-./target/debug/tributary}"
DATA="${DATA:-data/demo-kafka}"
EVENTS="${EVENTS:-5000}"
PORT="${PORT:-19092}"
REGION="${REGION:-us-east-1}"

rm -rf "$DATA" && mkdir -p "$DATA/broker"
( cd "$DATA/broker" && exec "$TANSU" broker --listener-url "tcp://127.0.0.1:$PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$PORT" --storage-engine sqlite://tansu.db --silent ) \
    > "$DATA/broker/tansu.log" 2>&1 &
BROKER=$!
trap 'kill $BROKER 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done

common=(--data "$DATA" --regions "$REGION" --brokers "127.0.0.1:$PORT")
"$BIN" generate "${common[@]}" --events-per-source "$EVENTS" --kafka --partitions 4
echo "--- bronze-ingest --from kafka (consumer group tributary-bronze) ---"
time "$BIN" bronze-ingest "${common[@]}" --region "$REGION" --from kafka --trigger available-now
echo "--- silver, gold, federator ---"
"$BIN" standalone "${common[@]}" --stages silver,gold,federator --exit-when-idle --timeout-secs 600
