"""The frontier benchmark's rows as a figure: held-out KL (trained scales) against the share
of the KV cache saved, one line per method, one panel per data set.

    python bench/frontier_plot.py docs/frontier-smollm2.json docs/frontier-smollm2.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from frontier import LABELS  # bench/frontier.py, beside this script  # noqa: E402

STYLE = {"block": "o-", "group": "s-", "linear": "^-", "auto": "D-"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("json", type=Path, help="rows as bench/frontier.py's --json wrote them, merged per set")
    p.add_argument("png", type=Path)
    a = p.parse_args()
    sets = json.loads(a.json.read_text())["sets"]
    fig, axes = plt.subplots(1, len(sets), figsize=(6 * len(sets), 4.5), squeeze=False)
    for ax, (name, data) in zip(axes[0], sets.items()):
        for method, style in STYLE.items():
            rows = sorted((r for r in data["rows"] if r["method"] == method), key=lambda r: r["kv_saved"])
            if rows:
                ax.plot([0] + [100 * r["kv_saved"] for r in rows], [0] + [r["kl"] for r in rows], style,
                        label=LABELS[method])  # fmt: skip
        ax.set_title(f"set {name}")
        ax.set_xlabel("KV cache saved (%)")
        ax.set_ylabel("held-out KL to the original (trained scales)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("SmolLM2-135M: quality paid per KV byte saved, by unit of removal")
    fig.tight_layout()
    fig.savefig(a.png, dpi=110)
    print(f"wrote {a.png}")


if __name__ == "__main__":
    main()
