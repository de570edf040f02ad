#!/usr/bin/env bash
# A two-minute tour: the provider simulator, omnirelay in front of it, and calls through each wire format.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin/omnirelay
SIM_PORT=${SIM_PORT:-18089}
PORT=${PORT:-50061}

cleanup() { kill "${GW_PID:-}" "${SIM_PID:-}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT

"$BIN" sim --port "$SIM_PORT" > /tmp/omnirelay-demo-sim.log 2>&1 &
SIM_PID=$!
SIM="http://127.0.0.1:$SIM_PORT"
env \
  OMNIRELAY_PROVIDERS__OPENAI__KIND=openai OMNIRELAY_PROVIDERS__OPENAI__BASE_URL="$SIM/v1" \
  OMNIRELAY_PROVIDERS__OPENAI__API_KEY=sk-demo \
  OMNIRELAY_PROVIDERS__ANTHROPIC__KIND=anthropic OMNIRELAY_PROVIDERS__ANTHROPIC__BASE_URL="$SIM" \
  OMNIRELAY_PROVIDERS__ANTHROPIC__API_KEY=sk-demo \
  OMNIRELAY_PROVIDERS__GEMINI__KIND=gemini OMNIRELAY_PROVIDERS__GEMINI__BASE_URL="$SIM" \
  OMNIRELAY_PROVIDERS__GEMINI__API_KEY=sk-demo \
  OMNIRELAY_PROVIDERS__OLLAMA__KIND=ollama OMNIRELAY_PROVIDERS__OLLAMA__BASE_URL="$SIM" \
  "$BIN" serve --port "$PORT" > /tmp/omnirelay-demo-gateway.log 2>&1 &
GW_PID=$!
for _ in $(seq 50); do "$BIN" health --target "127.0.0.1:$PORT" >/dev/null 2>&1 && break; sleep 0.2; done

for provider in openai anthropic gemini ollama; do
  printf '\n== %s (streamed, 40 ms between tokens) ==\n' "$provider"
  "$BIN" chat "hello from the demo" --target "127.0.0.1:$PORT" --model "$provider/sim-model+itl=40+tokens=15" --stream
done
printf '\n== a 429 from the upstream becomes RESOURCE_EXHAUSTED with a retry delay ==\n'
"$BIN" chat "hi" --target "127.0.0.1:$PORT" --model "anthropic/sim-model+fault=429+retry_after=7" || true
printf '\n== the simulator saw ==\n'
python3 -c "import json,urllib.request; s=json.load(urllib.request.urlopen('$SIM/_sim/stats')); print({k: s[k] for k in ('requests','completed','disconnected','by_format')})"
