"""The corpus builder, end to end, in two stages.

collect   every source lists units (packages, repositories, file batches, OTP apps); units run concurrently
          (asyncio for the network, the Elixir pool for parsing): licence check, fetch, decode, filter,
          secrets, parse, records and token counts. Each finished unit is checkpointed atomically under a
          key of everything that shaped it, so a killed run resumes where it stopped, a rerun with other
          settings (or code, or Elixir) redoes the units they change and says so, and a unit that failed for
          a transient reason (network, rate limit) is retried by the next run. Any other error in a unit (a
          hostile or malformed answer, an archive or term that breaks a reader) fails that unit alone: it is
          checkpointed as "failed" with the reason, and reruns skip it unless `retry_failed` is set. As soon as
          a package's units are all collected, its doctest check (doctest_check.py) starts in the sandboxed
          execution pool, beside the parsing.
assemble  the checkpoints of the units listed now, in unit-id order: exact and near file dedup and
          decontamination (`screen`, while the doctest checks finish), then the doctest verdicts, exact record
          dedup, split by package, shards + JSONL mirror, manifest.json and report.md. It is cheap and
          deterministic, so it is simply redone from the checkpoints on every run.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import functools
import logging
import shutil
from pathlib import Path
from typing import Any, Iterable, Iterator

import ml_collections
from tqdm import tqdm

from data_pipeline import PipelineError, difficulty, secret_filter
from data_pipeline import manifest as manifest_lib
from data_pipeline.books import BookError, book_chapters
from data_pipeline.checkpoint import UnitStore, changes, code_version, key, unit_settings
from data_pipeline.config import validate
from data_pipeline.decontam import Decontaminator, Fingerprint, Hit, load_benchmarks
from data_pipeline.dedup import exact_key
from data_pipeline.doctest_check import Check, CheckConfig, Verdicts
from data_pipeline.doctest_check import facts as doctest_facts
from data_pipeline.filters import FilterConfig, decode, elide_long_literals, rejection
from data_pipeline.instruct import InstructConfig, file_records
from data_pipeline.licences import decide
from data_pipeline.newer_syntax import installed_elixir, needs_newer
from data_pipeline.prose import Made, ProseConfig, ProseTally, guide_records
from data_pipeline.shards import MIRROR_DIR, SplitWriter, validation_packages
from data_pipeline.sources import BadAnswer, FetchFailed, Fetched, Unit, UnitRejected, UnitSource
from data_pipeline.sources.books import BooksSource
from data_pipeline.sources.github import GitHubConfig, GitHubSource
from data_pipeline.sources.hex_cache import HexCacheSource
from data_pipeline.sources.hexpm import HexConfig, HexSource
from data_pipeline.sources.http import HttpClient, HttpConfig
from data_pipeline.sources.local import LocalSource
from data_pipeline.sources.otp_docs import OtpDocsSource, otp_docs_worker
from data_pipeline.sources.prose import ElixirGuidesSource, prose_kind
from data_pipeline.sources.safe_tar import TarLimits
from data_pipeline.verify import Verified, VerifyConfig
from data_pipeline.verify import facts as verify_facts
from data_pipeline.verify import verify as verify_kinds
from devstral_jax.data.near_duplicates import NearDuplicates
from devstral_jax.data.records import Record, Source
from devstral_jax.elixir.parse import SourceSyntaxError, parse_source, parser_pool
from devstral_jax.elixir.worker import ElixirPool, WorkerCrashed, WorkerError, WorkerTimeout
from devstral_jax.tokenizers.tekken import load_tekken

log = logging.getLogger(__name__)


def run(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Builds (or resumes building) the dataset under config.output_dir; returns the manifest."""
    validate(config)
    output = Path(config.output_dir)
    store = UnitStore(output / "work" / "units")
    pipeline = {"version": code_version(), "elixir_version": installed_elixir()}
    with Check(CheckConfig(**config.doctests), config.workers, output) as doctest_check:
        listed, redone, failures = asyncio.run(collect(config, output, store, pipeline, doctest_check))
        screening = screen(config, store, listed)
        doctests = doctest_check.verdicts(store.results(listed))
    verified = verify_kinds(VerifyConfig(**config.verify), config.instruct.max_context_chars, config.seed,
                            config.workers, output, store.results(listed), doctests.dropped, pipeline["elixir_version"])
    if verified.added:  # records made by running packages: scored here, the files' own were scored when made
        with parser_pool(config.workers) as pool:
            for where, records in verified.added.items():
                verified.added[where] = difficulty.scored(pool, records, [_tokens(_tekken(), r) for r in records])
    return assemble(config, output, store, listed, failures, {**pipeline, "redone_units": redone}, screening,
                    doctests, verified)


# --- collect -------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class _Context:
    config: ml_collections.ConfigDict
    pool: ElixirPool
    tokenizer: concurrent.futures.Future  # Tekken, loading while the first files are read and parsed
    filters: FilterConfig
    instruct: InstructConfig
    elixir_version: str
    prose: ProseConfig

    def is_prose(self, path: str) -> bool:
        """A guide, cheatsheet or notebook: made into records by prose.py, not parsed as code."""
        return self.prose.enabled and prose_kind(path, self.prose.folders, self.prose.excluded_names) is not None

    def filters_for(self, path: str) -> FilterConfig:
        """Prose's paragraphs are often one long line: its line-length limits are its own."""
        if not self.is_prose(path):
            return self.filters
        return dataclasses.replace(self.filters, max_line_length=self.prose.max_line_length,
                                   max_mean_line_length=self.prose.max_mean_line_length)


async def collect(config: ml_collections.ConfigDict, output: Path, store: UnitStore, pipeline: dict[str, str],
                  doctest_check: Check) -> tuple[list[tuple[str, str]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Processes every unit not checkpointed under its current key, telling `doctest_check` what is listed and
    collected. Returns the (unit id, key) of every unit listed, the units redone because what shapes them
    changed, and the units that failed (retried next run)."""
    pool = parser_pool(config.workers)
    otp_worker = otp_docs_worker() if config.sources.otp_docs.enabled else None
    http = HttpClient(HttpConfig(**config.http), output / "cache" / "http")
    loader = concurrent.futures.ThreadPoolExecutor(1)
    tokenizer = loader.submit(_tekken)
    loader.shutdown(wait=False)  # its thread ends when Tekken is loaded
    context = _Context(config, pool, tokenizer, FilterConfig(**config.filters),
                       InstructConfig(seed=config.seed, **config.instruct), pipeline["elixir_version"],
                       ProseConfig(**config.prose))
    listed: list[tuple[str, str]] = []
    redone: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    queue: asyncio.Queue[tuple[Unit, dict[str, Any], str] | None] = asyncio.Queue(maxsize=2 * config.units_in_flight)
    progress = tqdm(desc="units", unit="unit", disable=not config.progress)

    async def produce() -> None:
        try:
            for source in _sources(config, output / "cache", http, pool, otp_worker, context):
                try:
                    async for unit in source.units():
                        settings = unit_settings(config, unit.kind, unit.licences, pipeline["version"],
                                                 pipeline["elixir_version"])
                        unit_key = key(settings)
                        listed.append((unit.id, unit_key))
                        saved = store.done(unit.id, unit_key) and not (config.retry_failed and
                                                                       store.failed(unit.id, unit_key))
                        doctest_check.listed((unit.kind, unit.package, unit.version), saved)
                        if saved:
                            progress.update()
                            continue
                        if (old := store.stale(unit.id, unit_key)) is not None:
                            redone.append({"unit": unit.id, "changes": changes(old, settings)})
                        await queue.put((unit, settings, unit_key))
                except FetchFailed as error:
                    failures.append({"unit": {"id": f"listing of {type(source).__name__}"}, "reason": str(error)})
                except Exception as error:  # noqa: BLE001 -- a hostile listing stops this source, not the run
                    if isinstance(error, PipelineError) and not isinstance(error, (BadAnswer, UnitRejected)):
                        raise  # a setting that cannot work
                    failures.append({"unit": {"id": f"listing of {type(source).__name__}"}, "reason": _reason(error)})
                    log.warning("Listing %s failed: %s", type(source).__name__, _reason(error),
                                exc_info=not isinstance(error, PipelineError))
        finally:
            doctest_check.listing_done()
            for _ in range(config.units_in_flight):
                await queue.put(None)

    async def consume() -> None:
        while (item := await queue.get()) is not None:
            unit, settings, unit_key = item
            try:
                result = await process_unit(unit, context)
                store.save({**result, "settings": settings}, unit_key)
                doctest_check.collected(result)
            except FetchFailed as error:
                failures.append({"unit": unit.describe(), "reason": str(error)})
                log.warning("%s failed (a re-run retries it): %s", unit.id, error)
            except Exception as error:  # noqa: BLE001 -- hostile input (or a bug): this unit fails alone
                store.save({"unit": unit.describe(), "status": "failed", "reason": _reason(error), "licence": None,
                            "files": [], "settings": settings}, unit_key)
                log.warning("%s failed (recorded; reruns skip it unless retry_failed=True): %s", unit.id,
                            _reason(error), exc_info=not isinstance(error, PipelineError))
            progress.update()

    try:
        await asyncio.gather(produce(), *(consume() for _ in range(config.units_in_flight)))
    finally:
        progress.close()
        await http.aclose()
        pool.close()
        if otp_worker:
            otp_worker.close()
    for change_set, count in collections.Counter("; ".join(unit["changes"]) for unit in redone).items():
        log.warning("Redid %d saved units because what shapes them changed: %s", count, change_set)
    return listed, redone, failures


def _reason(error: BaseException) -> str:
    """One line for the manifest: what failed and why."""
    message = " ".join(str(error).split())[:500]
    return message if isinstance(error, PipelineError) else f"{type(error).__name__}: {message}"


def _sources(config: ml_collections.ConfigDict, cache: Path, http: HttpClient, pool: ElixirPool,
             otp_worker: ElixirPool | None, context: _Context) -> list[UnitSource]:
    s = config.sources
    extensions = tuple(config.extensions)
    limits = TarLimits(max_files=config.archive.max_files, max_file_bytes=config.archive.max_file_bytes,
                       max_total_bytes=s.hex.max_uncompressed_bytes)
    wanted = lambda path: path.endswith(extensions) or context.is_prose(path)  # noqa: E731
    sources: list[UnitSource] = []
    if otp_worker:
        sources.append(OtpDocsSource(tuple(s.otp_docs.apps), otp_worker))
    if s.elixir_guides.enabled:
        sources.append(ElixirGuidesSource(s.elixir_guides.path, config.archive.max_file_bytes))
    if s.books.paths:
        sources.append(BooksSource(tuple(s.books.paths), s.books.licence, s.books.max_bytes))
    if s.local.paths:
        sources.append(LocalSource(tuple(s.local.paths), s.local.licence, s.local.batch_files, wanted,
                                   config.archive.max_file_bytes))
    if s.hex_cache.dirs:
        sources.append(HexCacheSource(tuple(s.hex_cache.dirs), pool, wanted, limits, s.hex.max_tarball_bytes))
    if s.hex.enabled:
        sources.append(HexSource(HexConfig(**{k: v for k, v in s.hex.items() if k != "enabled"}), http, pool,
                                 cache / "hex", wanted, limits))
    if s.github.enabled:
        sources.append(GitHubSource(GitHubConfig(**{k: v for k, v in s.github.items() if k != "enabled"}), http,
                                    cache / "github", wanted, limits))
    return sources


async def process_unit(unit: Unit, context: _Context) -> dict[str, Any]:
    """Licence, fetch, decode, filter, secrets, parse, records: the whole checkpointed result of one unit."""
    allow = context.config.licences.allow
    result: dict[str, Any] = {"unit": unit.describe(), "status": "done", "reason": "", "licence": None, "files": []}
    decision = decide(unit.licences, allow, unit.licence_source) if unit.licences is not None else None
    if decision is None or decision.allowed:
        try:
            fetched = await unit.fetch()
        except UnitRejected as error:
            licence = dataclasses.asdict(decision) if decision else None
            return {**result, "licence": licence, "status": "rejected", "reason": str(error)}
        decision = decision or decide(fetched.licences, allow)
    result["licence"] = dataclasses.asdict(decision)
    if not decision.allowed:
        return {**result, "status": "rejected", "reason": f"licence: {decision.reason}"}
    if unit.kind == "book":
        return {**result, "files": await asyncio.to_thread(_book_entries, unit, fetched, decision.licence, context)}
    files = [{"path": s.path, "status": "skipped", "reason": s.reason} for s in fetched.skipped]
    texts: dict[str, str] = {}
    for file in fetched.files:
        text = decode(file.content)
        filters = context.filters_for(file.path)
        if text is not None:
            text = elide_long_literals(text, filters.max_line_length)
        reason = "invalid UTF-8: not a UTF-8 text file" if text is None else rejection(file.path, text, filters)
        if reason:
            files.append({"path": file.path, "status": "skipped", "reason": reason})
        else:
            texts[file.path] = text
    entries = await asyncio.gather(*(
        asyncio.to_thread(_file_entry, Source(unit.kind, unit.package, unit.version, path, decision.licence, unit.url),
                          text, context)
        for path, text in texts.items()))
    result["files"] = sorted(files + list(entries), key=lambda f: f["path"])
    return result


def _file_entry(source: Source, text: str, context: _Context) -> dict[str, Any]:
    """Redacts secrets, parses one file and makes its records (with Tekken token counts); runs in a worker
    thread, so one file's scan overlaps another's parse."""
    scan = secret_filter.scan(source.path, text)
    text, secrets = scan.text, _secrets(scan)
    if scan.drop:
        return {"path": source.path, "status": "skipped", "reason": scan.drop, **secrets}
    if context.is_prose(source.path):
        try:
            return _made_entry(source.path, guide_records(source, text, context.pool, context.prose), context, secrets)
        except (WorkerError, WorkerCrashed, WorkerTimeout) as error:
            return {"path": source.path, "status": "skipped", "reason": f"parser failed: {str(error).splitlines()[0]}",
                    **secrets}
    try:
        parsed = parse_source(context.pool, source.path, text)
    except SourceSyntaxError as error:
        reason = needs_newer(text, str(error), context.elixir_version) or f"parse error: {error}"
        return {"path": source.path, "status": "skipped", "reason": reason, **secrets}
    except (WorkerError, WorkerCrashed, WorkerTimeout) as error:  # one odd file must not end a long run
        return {"path": source.path, "status": "skipped", "reason": f"parser failed: {str(error).splitlines()[0]}",
                **secrets}
    made = file_records(source, text, parsed, context.instruct)
    return {"path": source.path, "status": "kept", "reason": "", **secrets,
            "records": _record_entries(made.records, context), **doctest_facts(made), **verify_facts(made)}


def _book_entries(unit: Unit, fetched: Fetched, licence: str, context: _Context) -> list[dict[str, Any]]:
    """A book's chapters as the unit's entries (books.py), or the one reason it cannot be read."""
    (book,) = fetched.files
    source = Source(unit.kind, unit.package, unit.version, book.path, licence, unit.url)
    try:
        chapters = book_chapters(source, book.content, context.pool, context.prose)
    except BookError as error:
        return [{"path": book.path, "status": "skipped", "reason": str(error)}]
    except (WorkerError, WorkerCrashed, WorkerTimeout) as error:
        return [{"path": book.path, "status": "skipped", "reason": f"parser failed: {str(error).splitlines()[0]}"}]
    return [_made_entry(chapter.path, chapter.made, context, chapter.secrets) for chapter in chapters]


def _made_entry(path: str, made: Made, context: _Context, secrets: dict[str, Any]) -> dict[str, Any]:
    """A document's (or a book chapter's) entry: its records with their token counts, and its prose figures."""
    return {"path": path, "status": "kept", "reason": "", **secrets, "prose": made.facts,
            "records": _record_entries(made.records, context)}


def _record_entries(records: list[Record], context: _Context) -> list[dict[str, Any]]:
    """The records of a file entry, each with its difficulty (difficulty.py) and its Tekken token count."""
    tokens = [_tokens(context.tokenizer.result(), r) for r in records]
    return [{"record": r.to_dict(), "tokens": n}
            for r, n in zip(difficulty.scored(context.pool, records, tokens), tokens)]


def _secrets(scan: secret_filter.Scan) -> dict[str, Any]:
    """A file entry's note of what was redacted (kinds and lines, never the values); nothing when clean."""
    if not scan.found:
        return {}
    return {"secrets": {"kinds": secret_filter.counts(scan.found), "lines": sorted({f.line for f in scan.found})}}


@functools.cache
def _tekken() -> Any:
    return load_tekken()


def _tokens(tokenizer: Any, record: Record) -> int:
    """The record's Tekken tokens: `len(tokenizer.encode(text, bos=False, eos=False))` of each text, which is the
    length of its tiktoken model's encoding (Tekken adds its special tokens itself: the model has none), counted
    without shifting every id past the special tokens (half the time)."""
    return sum(len(tokenizer._model.encode_ordinary(text)) for text in record.contents())


# --- assemble ------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Screening:
    """What file dedup and decontamination found in the checkpoints: the first pass of the assembly, which does
    not depend on the doctest check, so it runs while the check finishes."""

    problems: list[Fingerprint]  # the benchmark problems decontamination looked for
    decontaminator: Decontaminator  # and what looked: the assembly asks it about records made after screening
    duplicates: dict[str, tuple[str, str]]  # file ("unit id:path") -> (the file it duplicates, rule)
    contaminated: dict[tuple[str, int], Hit]  # (file, index of a record in it) -> the problem the record holds


def screen(config: ml_collections.ConfigDict, store: UnitStore, listed: list[tuple[str, str]]) -> Screening:
    """Exact and near dedup of the kept files, in unit-id order (the first copy is kept), and decontamination of
    every record of the files kept."""
    problems = load_benchmarks(config.decontam.benchmarks)
    decontaminator = Decontaminator(problems, config.decontam.ngram, config.decontam.min_chars,
                                    config.decontam.min_informative)
    near = NearDuplicates(config.dedup.threshold, config.dedup.num_perm, config.dedup.ngram)
    screening = Screening(problems, decontaminator, {}, {})
    seen_files: dict[str, str] = {}
    results = tqdm(store.results(listed), desc="screen", unit="unit", total=len(set(listed)),
                   disable=not config.progress)
    for where, _, file in _kept_files(results):
        text = next(e["record"]["text"] for e in file["records"] if e["record"]["kind"] == "text")
        key = exact_key(text)
        if key in seen_files:
            screening.duplicates[where] = (seen_files[key], "exact")
        elif original := near.duplicate_of(where, text):
            screening.duplicates[where] = (original, "near")
        else:
            seen_files[key] = where
            for index, entry in enumerate(file["records"]):
                if hit := decontaminator.find(Record.from_dict(entry["record"]).contents()):
                    screening.contaminated[where, index] = hit
    return screening


def assemble(config: ml_collections.ConfigDict, output: Path, store: UnitStore, listed: list[tuple[str, str]],
             failures: list[dict[str, Any]], pipeline: dict[str, Any], screening: Screening, doctests: Verdicts,
             verified: Verified) -> dict[str, Any]:
    """Split and shards from the checkpoints of the units listed now (in their current keys), leaving out the
    duplicate files, the duplicate records, the contaminated ones (and the rest of a benchmark solution's file)
    and the records that failed their doctest or verify check, and adding those made by running their package
    (verify.py) after their file's own; writes manifest.json and report.md."""
    keys = dict(listed)
    units = [manifest_lib.summarize(result, keys[result["unit"]["id"]])  # a first pass, without the records
             for result in store.results(listed)]
    files_per_package = collections.Counter()
    for unit in units:
        if unit["files_kept"]:
            files_per_package[unit["package"]] += unit["files_kept"]
    held_out = validation_packages(files_per_package, config.split.validation_fraction, config.seed)

    staging = output / "work" / "staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    writers = {split: SplitWriter(staging, split, config.shards.records_per_shard)
               for split in ("train", "validation")}
    tally = manifest_lib.Tally()
    prose = ProseTally()
    seen_records: set[str] = set()
    results = tqdm(store.results(listed), desc="assemble", unit="unit", total=len(units), disable=not config.progress)
    for where, unit, file in _kept_files(results):
        prose.add(file)
        if duplicate := screening.duplicates.get(where):
            tally.duplicate_file(where, *duplicate)
            continue
        entries = [(Record.from_dict(entry["record"]), entry["tokens"], screening.contaminated.get((where, index)))
                   for index, entry in enumerate(file["records"])]
        # Records made by running the package (verify.py) come after the file's own; screening never saw them.
        made_here = verified.added.get((unit["kind"], unit["package"], unit["version"], file["path"]), [])
        entries += [(record, _tokens(_tekken(), record), screening.decontaminator.find(record.contents()))
                    for record in made_here]
        benchmark_file = False
        for record, tokens, hit in entries:
            if record.id in doctests.dropped or record.id in verified.dropped:
                continue
            key = record.kind + ":" + exact_key("\0".join(record.contents()))
            if key in seen_records:
                tally.duplicate_record()
                continue
            seen_records.add(key)
            if hit:
                tally.contaminated(record, hit)
                benchmark_file |= record.kind == "text"
                continue
            if benchmark_file:  # made from a benchmark's file (a repair of its solution, say): it goes too
                continue
            split = "validation" if record.package in held_out else "train"
            writers[split].write(dataclasses.replace(record, split=split))
            tally.kept(record, split, tokens)

    produced = {split: [str(path.relative_to(staging)) for path in writer.close()] for split, writer in writers.items()}
    failures = failures + [{"unit": {k: unit[k] for k in ("id", "kind", "package", "version", "url")},
                            "reason": unit["reason"]} for unit in units if unit["status"] == "failed"]
    manifest = manifest_lib.build(config, pipeline, units, failures, tally, screening.problems, produced)
    manifest["doctests"] = doctests.summary()
    manifest["prose"] = prose.summary()
    manifest["verified"] = verified.summary()
    manifest_lib.write(manifest, staging)
    _publish(staging, output)
    return manifest


def _kept_files(results: Iterable[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """("unit id:path", unit, file entry) of every kept file of the units' results, in their order."""
    for result in results:
        for file in result["files"]:
            if file["status"] == "kept":
                yield f"{result['unit']['id']}:{file['path']}", result["unit"], file


def _publish(staging: Path, output: Path) -> None:
    """Moves the finished files into output_dir, replacing the previous run's (and a JSONL mirror left beside
    the shards by older versions); the manifest goes last."""
    for stale in [*output.glob("*.array_record"), *output.glob("*.jsonl"), *output.glob(f"{MIRROR_DIR}/*.jsonl")]:
        stale.unlink()
    (output / MIRROR_DIR).mkdir(exist_ok=True)
    for path in sorted((p for p in staging.rglob("*") if p.is_file()), key=lambda p: p.name == "manifest.json"):
        path.replace(output / path.relative_to(staging))
    (staging / MIRROR_DIR).rmdir()
    staging.rmdir()
