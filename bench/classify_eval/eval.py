"""Accuracy of classification by meaning (issue 14), on public labelled data this project did not
write, through the router's own classifier, side by side with a transformer sentence encoder.

    bench/classify_eval/run        (sets everything up, then runs this)

Data: ../shared/data/mmlu-routing-dev/items.jsonl, read at run time and never copied into the
repository: 320 MMLU question stems (Hendrycks et al., repository hendrycks/test, commit
f112c7a259c4, MIT License), 40 for each of 8 routing labels mapped from their MMLU subject (see
that directory's README). `general` is the router's default model, not a category.

Categories: bench/classify_eval/categories.yaml, keywords and example utterances for the seven
other labels, written from domain knowledge before any scoring run and never tuned on the items.

Two protocols:
  sampled      the issue's: for each of 5 seeds, 8 items per label drawn as the categories'
               examples (the same 8 for every method), the other 256 items are the test set;
  handwritten  the examples of categories.yaml (8 per category), all 320 items are the test set.

Methods (the first three are the router's classifier: the `classify` example of
responses-router-core, reading a routing YAML written for each run):
  rules only      keywords, no model (the router without `classification.embedding`)
  embedding only  examples, no keywords (similarity alone, default threshold)
  combined        keywords + examples + model (what the router ships)
  MiniLM centroid all-MiniLM-L6-v2 (numpy), nearest centroid of each label's examples (the
                  sampled protocol has 8 labels with examples, the handwritten one 7)
  MiniLM, router's scoring   the router's formula (prototype + nearest points + rules) over
                  MiniLM vectors, general as one more category from its examples when it has any;
                  for reference: what a transformer gains with the same recipe, at its cost

Also: how many of the off-topic chat prompts of offtopic.yaml (outside all seven categories) the
router's `combined` configuration (handwritten examples) sends to the default model.

Writes bench/results/classify_eval.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
from minilm import MiniLM, self_check  # noqa: E402

LABELS = ["coding", "math", "science", "health", "law", "business", "humanities", "general"]
DEFAULT = "general"
SEEDS = range(5)
PER_LABEL = 8
# The router's scoring constants (crates/core/src/classify): mirrored for the MiniLM reference.
NEAREST_POINTS, NEAREST_WEIGHT, RULE_WEIGHT = 5, 0.5, 0.1


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "mmlu-routing-dev",
                    help="the labelled set's directory (items.jsonl)")
    ap.add_argument("--classify-bin", type=Path, required=True, help="the router's `classify` example")
    ap.add_argument("--model-dir", type=Path, default=ROOT / ".cache" / "models" / "wordllama-0.4.0.post1")
    ap.add_argument("--minilm-dir", type=Path, default=ROOT / ".cache" / "models" / "minilm")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    return ap.parse_args()


# ---- the router -----------------------------------------------------------------------------

def routing_yaml(categories: list[dict], examples: dict[str, list[str]] | None, keywords: bool,
                 model_dir: Path | None) -> str:
    """A routing config (as JSON, which is YAML) with one model per label and the given signals."""
    config = {
        "default_model": DEFAULT,
        "models": [{"name": label, "clusters": [{"name": label}]} for label in LABELS],
        "categories": [],
    }
    if model_dir is not None:
        config["classification"] = {"embedding": {"model_dir": str(model_dir)}}
    for c in categories:
        entry = {"name": c["name"], "model": c["name"]}
        if keywords:
            entry["keywords"] = c["keywords"]
        if examples is not None:
            entry["examples"] = examples[c["name"]]
        config["categories"].append(entry)
    return json.dumps(config, indent=1)


def run_router(binary: Path, config: str, texts: list[str]) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "routing.yaml"
        path.write_text(config)
        out = subprocess.run([str(binary), str(path)], input="\n".join(json.dumps(t) for t in texts) + "\n",
                             capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"classify failed:\n{out.stderr}")
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(rows) == len(texts)
    return rows


# ---- rules, for the MiniLM reference (the router's own scoring: whole-word, case-insensitive) --

def rule_points(text: str, keywords: list[str]) -> int:
    low, points = text.lower(), 0
    word = lambda ch: ch.isalnum() or ch == "_"  # noqa: E731
    for k in (k.lower() for k in keywords):
        start = low.find(k)
        while start >= 0:
            end = start + len(k)
            if (start == 0 or not word(low[start - 1])) and (end == len(low) or not word(low[end])):
                points += 1
            start = low.find(k, start + 1)
    return points


def unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v)
    return v / n if n > 0 else v


def recipe_predict(q: np.ndarray, protos: list[tuple[str, np.ndarray, np.ndarray]], points: list[int]) -> str:
    """The router's decision over MiniLM vectors, without a threshold (every text gets a category)."""
    best, best_score = None, -np.inf
    highest = max(max(points), 1)
    for (name, center, pts), p in zip(protos, points):
        cos = pts @ q
        nearest = np.sort(cos)[-NEAREST_POINTS:].mean() if len(cos) else 0.0
        sim = (center @ q + NEAREST_WEIGHT * nearest) / (1 + NEAREST_WEIGHT) if len(cos) else center @ q
        score = sim + RULE_WEIGHT * p / highest
        if score > best_score:
            best, best_score = name, score
    return best


# ---- metrics ----------------------------------------------------------------------------------

def scores(truth: list[str], predicted: list[str]) -> dict:
    f1 = {}
    for label in LABELS:
        tp = sum(t == p == label for t, p in zip(truth, predicted))
        fp = sum(p == label != t for t, p in zip(truth, predicted))
        fn = sum(t == label != p for t, p in zip(truth, predicted))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1[label] = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": sum(t == p for t, p in zip(truth, predicted)) / len(truth),
            "macro_f1": sum(f1.values()) / len(f1), "f1": f1}


def mean_scores(runs: list[dict]) -> dict:
    return {"accuracy": statistics.mean(r["accuracy"] for r in runs),
            "accuracy_sd": statistics.pstdev(r["accuracy"] for r in runs),
            "macro_f1": statistics.mean(r["macro_f1"] for r in runs),
            "f1": {label: statistics.mean(r["f1"][label] for r in runs) for label in LABELS}}


# ---- the evaluation ---------------------------------------------------------------------------

def main() -> None:
    args = parse_args()
    items_path = args.data / "items.jsonl"
    if not items_path.is_file():
        sys.exit(f"no labelled data at {items_path}: pass --data DIR (the mmlu-routing-dev directory)")
    items = [json.loads(line) for line in items_path.read_text().splitlines() if line.strip()]
    texts = [i["text"] for i in items]
    labels = [i["label"] for i in items]
    assert sorted(set(labels)) == sorted(LABELS), set(labels)
    categories = yaml.safe_load((HERE / "categories.yaml").read_text())["categories"]
    assert [c["name"] for c in categories] == LABELS[:-1]
    keywords = {c["name"]: c["keywords"] for c in categories}

    # Protocols: (name, [(examples per label, test indexes)]).
    sampled = []
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        chosen = {label: sorted(rng.choice([i for i, l in enumerate(labels) if l == label], PER_LABEL,
                                           replace=False).tolist()) for label in LABELS}
        taken = {i for idx in chosen.values() for i in idx}
        sampled.append(({label: [texts[i] for i in idx] for label, idx in chosen.items()},
                        [i for i in range(len(texts)) if i not in taken]))
    handwritten = [({c["name"]: c["examples"] for c in categories}, list(range(len(texts))))]
    protocols = [("sampled", sampled), ("handwritten", handwritten)]

    # MiniLM vectors of every text and example, each embedded once; its time per text is measured
    # on the 320 items, one thread (as the router's classifier runs on one core).
    print("MiniLM: loading, self-check", file=sys.stderr)
    minilm = MiniLM(args.minilm_dir)
    check = self_check(minilm)
    assert abs(check - 0.755) < 0.005, f"MiniLM self-check: cosine {check:.4f}, expected about 0.755"
    cache: dict[str, np.ndarray] = {}
    minilm_ms = []
    for t in texts:
        started = time.perf_counter()
        cache[t] = minilm.embed(t)
        minilm_ms.append((time.perf_counter() - started) * 1e3)

    def mini(text: str) -> np.ndarray:
        if text not in cache:
            cache[text] = minilm.embed(text)
        return cache[text]

    results: dict = {"protocols": {}}
    router_times: list[tuple[float, float]] = []
    for name, splits in protocols:
        print(f"{name}: {len(splits)} split(s)", file=sys.stderr)
        runs: dict[str, list[dict]] = {m: [] for m in METHODS}
        for examples, test in splits:
            test_texts = [texts[i] for i in test]
            truth = [labels[i] for i in test]
            router_examples = {label: examples[label] for label in LABELS[:-1]}
            configs = {
                "rules only": routing_yaml(categories, None, True, None),
                "embedding only": routing_yaml(categories, router_examples, False, args.model_dir),
                "combined": routing_yaml(categories, router_examples, True, args.model_dir),
            }
            for method, config in configs.items():
                rows = run_router(args.classify_bin, config, test_texts)
                predicted = [r["category"] or DEFAULT for r in rows]
                runs[method].append(scores(truth, predicted))
                if method == "combined":
                    router_times.extend((r["first_us"], r["warm_us"]) for r in rows)
            # MiniLM centroid: every label that has examples.
            centroids = {label: unit(np.mean([mini(e) for e in ex], 0)) for label, ex in examples.items()}
            names = list(centroids)
            matrix = np.stack([centroids[n] for n in names])
            predicted = [names[int(np.argmax(matrix @ mini(t)))] for t in test_texts]
            runs["MiniLM centroid"].append(scores(truth, predicted))
            # MiniLM with the router's recipe.
            protos = []
            for label, ex in examples.items():
                kw = keywords.get(label, [])
                e = unit(np.mean([mini(x) for x in ex], 0))
                center = unit(e + unit(np.mean([mini(k) for k in kw], 0))) if kw else e
                pts = np.stack([mini(x) for x in ex] + [mini(k) for k in kw])
                protos.append((label, center, pts))
            predicted = [recipe_predict(mini(t), protos, [rule_points(t, keywords.get(label, []))
                                                          for label, *_ in protos]) for t in test_texts]
            runs["MiniLM, router's scoring"].append(scores(truth, predicted))
        results["protocols"][name] = {m: mean_scores(r) for m, r in runs.items()}

    # Off-topic chat prompts: the threshold's other job.
    offtopic = yaml.safe_load((HERE / "offtopic.yaml").read_text())["prompts"]
    rows = run_router(args.classify_bin, routing_yaml(categories, handwritten[0][0], True, args.model_dir),
                      offtopic)
    results["offtopic_to_default"] = sum(r["category"] is None for r in rows) / len(rows)
    results["offtopic_count"] = len(rows)

    first = sorted(t for t, _ in router_times)
    warm = sorted(w for _, w in router_times)
    pct = lambda xs, q: xs[min(len(xs) - 1, int(q * len(xs)))]  # noqa: E731
    results["time_per_text"] = {
        "router_first_us_median": statistics.median(first), "router_first_us_p95": pct(first, 0.95),
        "router_warm_us_median": statistics.median(warm), "router_warm_us_p95": pct(warm, 0.95),
        "minilm_ms_median": statistics.median(minilm_ms), "minilm_ms_mean": statistics.mean(minilm_ms),
        "minilm_ms_p95": pct(sorted(minilm_ms), 0.95),
    }
    results["minilm_self_check"] = check
    results["data"] = str(items_path)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "classify_eval.json").write_text(json.dumps(results, indent=2) + "\n")
    report = markdown(results)
    (args.out / "classify_eval.md").write_text(report)
    print(report)


METHODS = ["rules only", "embedding only", "combined", "MiniLM centroid", "MiniLM, router's scoring"]


def markdown(results: dict) -> str:
    out = []
    s, h = results["protocols"]["sampled"], results["protocols"]["handwritten"]
    out.append("| method | sampled: accuracy (sd) | sampled: macro-F1 | handwritten: accuracy | handwritten: macro-F1 |")
    out.append("|---|---|---|---|---|")
    for m in METHODS:
        out.append(f"| {m} | {s[m]['accuracy']:.3f} ({s[m]['accuracy_sd']:.3f}) | {s[m]['macro_f1']:.3f} | "
                   f"{h[m]['accuracy']:.3f} | {h[m]['macro_f1']:.3f} |")
    for proto, r in (("sampled", s), ("handwritten", h)):
        out.append("")
        out.append(f"Per-category F1, {proto}:")
        out.append("")
        out.append("| method | " + " | ".join(LABELS) + " |")
        out.append("|---|" + "---|" * len(LABELS))
        for m in METHODS:
            out.append(f"| {m} | " + " | ".join(f"{r[m]['f1'][label]:.2f}" for label in LABELS) + " |")
    t = results["time_per_text"]
    out.append("")
    out.append(f"Time per text (test items, one thread): router `combined` {t['router_warm_us_median']:.1f} µs "
               f"median warm (p95 {t['router_warm_us_p95']:.1f}), {t['router_first_us_median']:.1f} µs median "
               f"at first sight (p95 {t['router_first_us_p95']:.1f}); MiniLM {t['minilm_ms_median']:.1f} ms "
               f"median (mean {t['minilm_ms_mean']:.1f}, p95 {t['minilm_ms_p95']:.1f}).")
    out.append(f"Off-topic chat prompts (offtopic.yaml) sent to the default model by `combined` (handwritten "
               f"examples, min_similarity 0.15): {results['offtopic_to_default'] * results['offtopic_count']:.0f} "
               f"of {results['offtopic_count']}.")
    out.append(f"MiniLM self-check: cos(\"A man is eating food.\", \"A man is eating a piece of bread.\") = "
               f"{results['minilm_self_check']:.4f} (sentence-transformers: 0.755).")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    main()
