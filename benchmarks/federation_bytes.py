"""Bytes a device uploads per round, fp32 vs fp16 vs int8 (acceptance 5 of issue 5).

A real round (`federation.device.train_round`) on the real base for one foursquare_nyc device,
over the population's full label space; the bytes are those of the Flower RecordDict the
ClientApp replies with (every serialised Flower object: payload + framing), as the simulation
and deployment runs report them in `bytes-up`.

    .venv/bin/python -m benchmarks.federation_bytes [--model minilm-l6]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--lora-r", type=int, default=8)
    args = parser.parse_args()

    from federation.config import FederationConfig
    from federation.device import DeviceRound, initial_adapter, shared_base, train_round
    from federation.wire import content_nbytes, wire_to_content
    from personal.examples import events_to_examples
    from simulations.populations import load_population, select_devices

    population = load_population("foursquare-nyc")
    labels = population.labels()  # the whole population's vocabulary: the shared head's label space
    pop = select_devices(population, 1)
    events = pop.devices[0].events[-200:]
    examples = events_to_examples(events)
    base = shared_base(args.model)
    rows = []
    for encoding in ("fp32", "fp16", "int8"):
        cfg = FederationConfig(encoding=encoding, base=args.model, lora_r=args.lora_r, clip_norm=1.0, noise_multiplier=1.0)
        adapter = initial_adapter(base, labels, cfg)
        t0 = time.perf_counter()
        result = train_round(base, adapter, examples, cfg, DeviceRound("bench", 1, rng=np.random.default_rng(0)))
        seconds = time.perf_counter() - t0
        sent = content_nbytes(wire_to_content(result.wire, {"bytes-up": 0.0, "epsilon": 0.0}))
        rows.append((encoding, adapter.num_parameters(), result.wire.nbytes(), sent, seconds))
    fp32 = rows[0][3]
    print(f"model {args.model}, LoRA r={args.lora_r} on the top layer + head over {len(labels)} labels; "
          f"device with {len(examples)} examples")
    print("| encoding | shared-adapter values | payload bytes | bytes sent per round (Flower message) | vs fp32 | round wall s |")
    print("|---|---|---|---|---|---|")
    for encoding, d, payload, sent, seconds in rows:
        print(f"| {encoding} | {d:,} | {payload:,} | {sent:,} | {sent / fp32:.3f} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
