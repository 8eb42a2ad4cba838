"""
The replication's figures (PNG, matplotlib), from the small files in replication/results/:

  curve/<name>-step<N>.json   --> learning_curves.png   holdout DFA (non-trivial golds, and all) per epoch, per curve
                                                          (jepa-<name>: the DLLM-JEPA arm's; the others the baseline's)
                              --> printed: the curve table (scores, empty outputs, WikiText loss where probed)
  <arms_dir>/<arm>-s<seed>-probe.json --> drift_per_layer.png   drift per layer per arm: mean over seeds, min-max band
                                      --> drift_vs_forgetting.png  drift (mean) against forgetting, one point per
                                                                   run, each seed's runs joined by a grey line
                                      --> printed: the probed texts' table (loss, calibrated loss, top-1, KL,
                                          calibrated retention; the base, then each arm over the seeds all share)

  python -m replication.figures --results replication/results
  python -m replication.figures --results replication/results --arms_dir three-arms   # figures in three-arms/

Every figure draws an arm in one colour (ARM_COLOURS): the baseline blue, DLLM-JEPA orange, the control green.

A figure whose files are not there yet is skipped with a line saying so.
"""

import glob
import os
import re
import statistics
import sys

from configurator import configure, setting_keys
from harness.errors import parse_json, read_text
from harness.runtime import run_main

results = "replication/results"  # the folder holding curve/ and arms/
arms_dir = "arms"  # the runs' folder under results whose probes the drift figures show
drift_out = ""  # where the drift figures go; empty = results for the first run's arms/, else results/<arms_dir>
steps_per_epoch = 235  # NL-RX-SYNTH: 7,500 training items in batches of 32
KEYS = setting_keys(globals())


ARM_COLOURS = {"baseline": "tab:blue", "jepa": "tab:orange", "control": "tab:green"}
ARM_NAMES = {"baseline": "baseline", "jepa": "DLLM-JEPA", "control": "shuffled-target control"}
CURVE_MARKERS = "osD^v"


def read(path):
    return parse_json(read_text(path, "result file"), path)


def last_step(folder, name):
    """The last step in <name>-log.jsonl: where final/ stands (its file name says 'final', not the step)."""
    lines = read_text(os.path.join(folder, "curve", f"{name}-log.jsonl"), "training log").splitlines()
    return parse_json(lines[-1], f"{name}-log.jsonl")["step"]


def curves(folder):
    """{name: [(epoch, nontrivial DFA, DFA)]} sorted by epoch, final/ at its run's last step."""
    found = {}
    for path in glob.glob(os.path.join(folder, "curve", "*-step*.json")):
        m = re.fullmatch(r"(.+)-step(\d+|final)\.json", os.path.basename(path))
        if m:
            s = read(path)
            step = last_step(folder, m.group(1)) if m.group(2) == "final" else int(m.group(2))
            found.setdefault(m.group(1), []).append((step / steps_per_epoch, s.get("nontrivial/dfa"), s["dfa"]))
    return {k: sorted(v) for k, v in sorted(found.items())}


def curve_rows(folder):
    """The learning-curve table of replication/README.md, one markdown row per scored point: run, epoch,
    non-trivial DFA, DFA, non-trivial functional, exact, empty outputs (from the items file), and the
    WikiText-103 loss of that point where the curve was probed (levers/probe-curve-<run>.json)."""
    import gzip
    rows = []
    for path in sorted(glob.glob(os.path.join(folder, "curve", "*-step*.json"))):
        m = re.fullmatch(r"(.+)-step(\d+|final)\.json", os.path.basename(path))
        if not m:
            continue
        name, s = m.group(1), read(path)
        step = last_step(folder, name) if m.group(2) == "final" else int(m.group(2))
        with gzip.open(path[:-len(".json")] + "-items.jsonl.gz", "rt") as f:
            empty = sum(1 for line in f if not parse_json(line, path)["prediction"].strip())
        probe = os.path.join(folder, "levers", f"probe-curve-{name}.json")
        loss = None
        if os.path.exists(probe):
            found = read(probe)["checkpoints"]
            for key in (f"step{m.group(2)}", f"epoch{round(step / steps_per_epoch)}"):
                loss = found.get(key, {}).get("wikitext_loss", loss)
        rows.append((name, step / steps_per_epoch, s.get("nontrivial/dfa"), s["dfa"], s.get("nontrivial/functional"),
                     s["exact"], empty, loss))
    rows.sort(key=lambda r: (r[0], r[1]))
    return [f"| {r[0]} | {r[1]:g} | {r[2]:.3f} | {r[3]:.3f} | {r[4]:.3f} | {r[5]:.3f} | {r[6]} | "
            f"{'-' if r[7] is None else f'{r[7]:.2f}'} |" for r in rows]


def probe_files(folder):
    """{arm: {seed: the probe.json}} of the probes in folder."""
    found = {}
    for path in glob.glob(os.path.join(folder, "*-s*-probe.json")):
        m = re.fullmatch(r"(.+)-s(\d+)-probe\.json", os.path.basename(path))
        if m:
            found.setdefault(m.group(1), {})[int(m.group(2))] = read(path)
    return found


def fine_tuned(found):
    """{arm: {seed: the fine-tuned checkpoint's probe numbers}} of probe_files()."""
    return {arm: {seed: p["checkpoints"]["ft"] for seed, p in runs.items()} for arm, runs in found.items()}


# the probed texts' table: (the probe's name of the measure, the column's title, decimals)
TEXT_MEASURES = [("loss", "loss", 2), ("calibrated_loss", "calibrated loss", 2), ("temperature", "T", 2),
                 ("top1", "top-1", 3), ("kl_from_base", "KL(base \\|\\| ft)", 2),
                 ("retention_calibrated", "calibrated retention", 2)]


def texts_rows(found):
    """The probed texts' table of replication/README.md (markdown lines, header first) from probe_files():
    for each text the base's measures, then each arm's mean +- population sd over the seeds every arm has
    (the seeds the tests pair). Each text opens with the unigram model of the base's corpus, the reference
    retention is read against: its loss on all samples, and under "calibrated loss" its loss on the half the
    calibrated losses are reported on (a unigram has no temperature). A measure a model has not reads '-'."""
    seeds = sorted(set.intersection(*(set(runs) for runs in found.values())))
    if not seeds:
        return []
    first = found[next(iter(found))][seeds[0]]
    lines = ["| text | model | " + " | ".join(t for _, t, _ in TEXT_MEASURES) + " |",
             "|---|---|" + "---|" * len(TEXT_MEASURES)]
    for text, info in first.get("texts", {}).items():
        unigram = {"loss": info.get("unigram_loss"), "calibrated_loss": info.get("unigram_loss_report_half")}
        lines.append(f"| {text} | unigram | " + " | ".join(
            cell([unigram.get(k)], d) for k, _, d in TEXT_MEASURES) + " |")
        lines.append("| | base | " + " | ".join(
            cell([first["checkpoints"]["base"]["texts"][text].get(k)], d) for k, _, d in TEXT_MEASURES) + " |")
        for arm in sorted(found, key=lambda a: list(ARM_COLOURS).index(a) if a in ARM_COLOURS else len(ARM_COLOURS)):
            measured = [found[arm][s]["checkpoints"]["ft"]["texts"][text] for s in seeds]
            lines.append(f"| | {ARM_NAMES.get(arm, arm)} ({len(seeds)} seeds) | " + " | ".join(
                cell([m.get(k) for m in measured], d) for k, _, d in TEXT_MEASURES) + " |")
    return lines


def cell(values, decimals):
    """One value as it is, several as mean +- population sd; '-' where any is missing."""
    if not values or any(v is None for v in values):
        return "-"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{decimals}f}"
    return f"{mean:.{decimals}f} +- {statistics.pstdev(values):.{decimals}f}"  # as aggregate.py's spread


def curve_arm(name):
    """(arm, curve name within it): replicate.sh names the DLLM-JEPA arm's curves jepa-<...>."""
    return ("jepa", name[len("jepa-"):]) if name.startswith("jepa-") else ("baseline", name)


def plot_curves(plt, data, out):
    """The arm's colour for every curve of the arm, one marker per curve within it; solid for the non-trivial
    golds, dotted for all."""
    fig, ax = plt.subplots(figsize=(6, 4))
    seen = {}
    for name, points in data.items():
        epochs, (arm, curve) = [p[0] for p in points], curve_arm(name)
        marker = CURVE_MARKERS[seen.setdefault(arm, []).__len__() % len(CURVE_MARKERS)]
        seen[arm].append(name)
        label, colour = f"{ARM_NAMES[arm]} {curve}", ARM_COLOURS[arm]
        ax.plot(epochs, [p[1] for p in points], marker=marker, color=colour, label=f"{label}: non-trivial golds")
        ax.plot(epochs, [p[2] for p in points], marker=marker, ms=3, linestyle=":", color=colour, label=f"{label}: all")
    ax.set(xlabel="epoch", ylabel="holdout DFA match", title="Learning curves on the 500 held-out items (seed 42)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def plot_drift(plt, data, out_layers, out_scatter):
    fig, ax = plt.subplots(figsize=(6, 4))
    for arm, runs in sorted(data.items()):
        layers = list(zip(*(r["drift_per_layer"] for r in runs.values())))
        mean = [sum(v) / len(v) for v in layers]
        colour = ARM_COLOURS.get(arm)
        ax.plot(range(len(mean)), mean, marker="o", color=colour, label=f"{ARM_NAMES.get(arm, arm)} ({len(runs)} seeds)")
        ax.fill_between(range(len(mean)), [min(v) for v in layers], [max(v) for v in layers], alpha=0.2, color=colour)
    ax.set(xlabel="layer (0 = embeddings)", ylabel="drift from the base", title="Drift per layer: mean, min-max over seeds")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_layers, dpi=120)
    fig, ax = plt.subplots(figsize=(5, 4))
    for seed, points in seed_points(data).items():  # each seed's runs joined: the pairing the tests use
        ax.plot([p[0] for p in points], [p[1] for p in points], color="0.75", linewidth=0.8, zorder=1)
    for arm, runs in sorted(data.items()):
        ax.scatter([r["drift"]["mean"] for r in runs.values()], [r["forgetting"] for r in runs.values()],
                   color=ARM_COLOURS.get(arm), label=ARM_NAMES.get(arm, arm), zorder=2)
    ax.set(xlabel="mean drift", ylabel="forgetting (WikiText loss - base's, nats)", title="Drift against forgetting, per seed")
    fig.legend(loc="lower center", ncol=3, fontsize=8)  # below the axes: inside, it hides points
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(out_scatter, dpi=120)


def seed_points(data):
    """{seed: [(drift, forgetting) of each arm's run at that seed, in the arms' order]} for the seeds more
    than one arm has."""
    seeds = sorted({s for runs in data.values() for s in runs})
    points = {s: [(runs[s]["drift"]["mean"], runs[s]["forgetting"]) for _, runs in sorted(data.items()) if s in runs]
              for s in seeds}
    return {s: p for s, p in points.items() if len(p) > 1}


def main(argv):
    configure(globals(), KEYS, argv)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    print("| run | epoch | non-trivial DFA | DFA | non-trivial functional | exact | empty | WikiText loss |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(curve_rows(results)))
    data = curves(results)
    if data:
        plot_curves(plt, data, os.path.join(results, "learning_curves.png"))
        print(f"wrote {os.path.join(results, 'learning_curves.png')}: {', '.join(data)}")
    else:
        print("no learning curve yet")
    found = probe_files(os.path.join(results, arms_dir))
    arms = fine_tuned(found)
    out = drift_out or (results if arms_dir == "arms" else os.path.join(results, arms_dir))  # never over another run's
    if len(arms) >= 2:
        os.makedirs(out, exist_ok=True)
        plot_drift(plt, arms, os.path.join(out, "drift_per_layer.png"), os.path.join(out, "drift_vs_forgetting.png"))
        print(f"wrote the drift figures: {', '.join(f'{a} ({len(r)} seeds)' for a, r in sorted(arms.items()))}")
    else:
        print("no arms' probes yet: the drift figures wait for them")
    if found:
        print("\n".join([""] + texts_rows(found)))


if __name__ == "__main__":
    run_main("replication/figures.py", main, sys.argv[1:], lambda: 0)
