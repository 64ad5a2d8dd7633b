"""manifest.json (every decision and figure of a run) and report.md (the short human summary)."""

from __future__ import annotations

import collections
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import ml_collections

from data_pipeline.decontam import Fingerprint, Hit
from devstral_jax.atomic import atomic_write
from devstral_jax.data.records import Record


@dataclasses.dataclass
class Tally:
    """What the assembly kept and dropped, record by record."""

    records: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # (split, kind)
    tasks: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # (split, task)
    tokens: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # (split, kind)
    packages: dict[str, set[str]] = dataclasses.field(default_factory=lambda: collections.defaultdict(set))
    duplicate_files: list[dict[str, str]] = dataclasses.field(default_factory=list)
    duplicate_records: int = 0
    decontaminated: list[dict[str, str]] = dataclasses.field(default_factory=list)

    def kept(self, record: Record, split: str, tokens: int) -> None:
        self.records[split, record.kind] += 1
        self.tasks[split, record.task] += 1
        self.tokens[split, record.kind] += tokens
        self.packages[split].add(record.package)

    def duplicate_file(self, where: str, original: str, rule: str) -> None:
        self.duplicate_files.append({"file": where, "duplicate_of": original, "rule": rule})

    def duplicate_record(self) -> None:
        self.duplicate_records += 1

    def contaminated(self, record: Record, hit: Hit) -> None:
        self.decontaminated.append({"id": record.id, "task": record.task,
                                    "file": f"{record.package}:{record.source.path}",
                                    "benchmark": hit.benchmark, "problem": hit.problem, "rule": hit.rule,
                                    "span": hit.span})


def summarize(result: dict[str, Any], unit_key: str) -> dict[str, Any]:
    """A unit's checkpointed result without its records: its line in the manifest, its skipped files and the
    secrets found in its files (kinds and lines, never the values)."""
    files = result["files"]
    kept = sum(f["status"] == "kept" for f in files)
    return {**result["unit"], "status": result["status"], "reason": result["reason"], "licence": result["licence"],
            "settings_key": unit_key, "files_kept": kept, "files_skipped": len(files) - kept,
            "skipped": [{"path": f["path"], "reason": f["reason"]} for f in files if f["status"] == "skipped"],
            "secrets": [{"path": f["path"], **f["secrets"]} for f in files if f.get("secrets")]}


def build(config: ml_collections.ConfigDict, pipeline: dict[str, Any], summaries: list[dict[str, Any]],
          failures: list[dict[str, Any]], tally: Tally, problems: list[Fingerprint],
          outputs: dict[str, list[str]]) -> dict[str, Any]:
    units = [{k: v for k, v in summary.items() if k not in ("skipped", "secrets")} for summary in summaries]
    skipped_files = [{"unit": s["id"], **skipped} for s in summaries for skipped in s["skipped"]]
    secret_files = [{"unit": s["id"], **found} for s in summaries for found in s["secrets"]]
    newer = collections.Counter(re.match(r"needs a newer Elixir: ([\d.]+)", f["reason"]).group(1)
                                for f in skipped_files if f["reason"].startswith("needs a newer Elixir"))
    by_source: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    licences = {"allowed": collections.Counter(), "rejected": collections.Counter()}
    for unit in units:
        by_source[unit["kind"]][unit["status"]] += 1
        if decision := unit["licence"]:
            licences["allowed" if decision["allowed"] else "rejected"][decision["licence"]] += 1
    splits = {split: {
        "files": outputs[split],
        "packages": len(tally.packages[split]),
        "records": sum(n for (s, _), n in tally.records.items() if s == split),
        "records_by_kind": {k: n for (s, k), n in sorted(tally.records.items()) if s == split},
        "records_by_task": {t: n for (s, t), n in sorted(tally.tasks.items()) if s == split},
        "tekken_tokens": sum(n for (s, _), n in tally.tokens.items() if s == split),
        "tekken_tokens_by_kind": {k: n for (s, k), n in sorted(tally.tokens.items()) if s == split},
    } for split in ("train", "validation")}
    return {
        "config": config.to_dict(),
        "pipeline": pipeline,
        "sources": {kind: dict(counts) for kind, counts in sorted(by_source.items())},
        "licences": {"allowlist": list(config.licences.allow),
                     **{k: dict(sorted(v.items())) for k, v in licences.items()}},
        "files": {"kept": sum(u["files_kept"] for u in units), "skipped": len(skipped_files),
                  "skipped_by_reason": dict(collections.Counter(f["reason"].split(":")[0] for f in skipped_files)
                                            .most_common()),
                  "needs_newer_elixir": dict(sorted(newer.items()))},
        "secrets": {"found": dict(sorted(sum((collections.Counter(f["kinds"]) for f in secret_files),
                                             collections.Counter()).items())),
                    "files": secret_files,
                    "dropped_files": sum(f["reason"].startswith("secrets:") for f in skipped_files)},
        "dedup": {"settings": config.dedup.to_dict(),
                  "exact_files": sum(d["rule"] == "exact" for d in tally.duplicate_files),
                  "near_files": sum(d["rule"] == "near" for d in tally.duplicate_files),
                  "exact_records": tally.duplicate_records, "removed_files": tally.duplicate_files},
        "decontamination": {
            "benchmarks": dict(collections.Counter(p.benchmark for p in problems)),
            "dropped": len(tally.decontaminated),
            "by_rule": dict(collections.Counter(d["rule"] for d in tally.decontaminated)),
            "by_problem": dict(collections.Counter(f"{d['benchmark']}:{d['problem']}" for d in tally.decontaminated)),
            "records": tally.decontaminated},
        "splits": {**splits, "validation_packages": sorted(tally.packages["validation"])},
        "failed_units": failures,
        "units": units,
        "skipped_files": skipped_files,
    }


def write(manifest: dict[str, Any], directory: Path) -> None:
    atomic_write(directory / "manifest.json", json.dumps(manifest, indent=1, ensure_ascii=False).encode())
    atomic_write(directory / "report.md", report(manifest).encode())


def report(manifest: dict[str, Any]) -> str:
    train, validation = manifest["splits"]["train"], manifest["splits"]["validation"]
    dedup, decontam, files = manifest["dedup"], manifest["decontamination"], manifest["files"]
    lines = [
        "# Elixir corpus report", "",
        "| split | packages | records | Tekken tokens | by kind |", "|---|---|---|---|---|",
        *(f"| {name} | {s['packages']} | {s['records']} | {s['tekken_tokens']:,} | "
          f"{', '.join(f'{k} {n}' for k, n in s['records_by_kind'].items())} |"
          for name, s in (("train", train), ("validation", validation))),
        "",
        f"- Records by task (train): {_counts(train['records_by_task'])}.",
        f"- Units by source: {'; '.join(f'{k}: {_counts(n)}' for k, n in manifest['sources'].items()) or 'none'}.",
        f"- Licences allowed: {_counts(manifest['licences']['allowed'])}; rejected: "
        f"{_counts(manifest['licences']['rejected'])}.",
        f"- Files kept: {files['kept']}; skipped: {files['skipped']} ({_counts(files['skipped_by_reason'])}); "
        f"needing a newer Elixir than {manifest['pipeline']['elixir_version']}: "
        f"{_counts(files['needs_newer_elixir'])}.",
        f"- Secrets and personal data found (redacted): {_counts(manifest['secrets']['found'])}; "
        f"files dropped for holding secrets: {manifest['secrets']['dropped_files']}.",
        f"- Dedup: {dedup['exact_files']} exact and {dedup['near_files']} near-duplicate files removed "
        f"(MinHash {dedup['settings']['num_perm']} permutations, {dedup['settings']['ngram']}-grams, Jaccard "
        f"{dedup['settings']['threshold']}); {dedup['exact_records']} duplicate records.",
        f"- Decontamination against {sum(decontam['benchmarks'].values())} problems "
        f"({_counts(decontam['benchmarks'])}): {decontam['dropped']} records dropped ({_counts(decontam['by_rule'])}).",
    ]
    if redone := manifest["pipeline"]["redone_units"]:
        lines.append(f"- {len(redone)} units were redone because what shapes them changed "
                     f"({'; '.join(sorted({c for unit in redone for c in unit['changes']}))[:500]}).")
    if doctests := manifest.get("doctests"):
        lines.append(f"- Doctest tests: kept {doctests['kept']}, run {doctests['run']}, passed {doctests['passed']}; "
                     f"dropped: {_counts(doctests['dropped_by_reason'])}.")
    if prose := manifest.get("prose"):
        lines.append(f"- Documents: {_counts(prose['documents'])}; {prose['sections']} sections; code blocks: "
                     f"{_counts(prose['code_blocks'])}; not made into records: {_counts(prose['dropped_by_reason'])}.")
    if manifest["failed_units"]:
        lines.append(f"- **{len(manifest['failed_units'])} units failed** and are missing; run again to retry them.")
    return "\n".join(lines) + "\n"


def _counts(counter: dict[str, int]) -> str:
    return ", ".join(f"{key} {n}" for key, n in counter.items()) or "none"
