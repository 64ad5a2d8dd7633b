"""A long literal (a base64 data URI, as in plug/lib/plug/debugger.ex and phoenix's endpoint.ex) is cut short
instead of costing its whole file: the file is kept, still parses, and no record carries the literal."""

import base64
import json
from pathlib import Path

from data_pipeline.config import base_config
from data_pipeline.filters import FilterConfig, elide_long_literals, rejection
from data_pipeline.run import run
from data_pipeline.shards import MIRROR_DIR
from devstral_jax.elixir.parse import parse_source

LOGO = "data:image/png;base64," + base64.b64encode(bytes(range(256)) * 40).decode()  # 13,678 characters

# Modelled on Plug.Debugger: a style map with an inline logo, then the code that uses it.
DEBUGGER = '''defmodule MyApp.Debugger do
  @moduledoc "Renders a page for the errors raised while a plug handles a request, with the code around each frame."

  @default_style %{
    primary: "#4e2a8e",
    logo:
      "LOGO",
    monospace_font: "menlo, consolas, monospace"
  }

  @doc "The style of the error page, with the defaults for what `overrides` leaves out."
  def style(overrides \\\\ %{}) do
    Map.merge(@default_style, overrides)
  end
end
'''


def test_the_literal_is_cut_and_the_code_kept(pool):
    text = DEBUGGER.replace("LOGO", LOGO)
    config = FilterConfig(**base_config().filters)
    assert rejection("lib/my_app/debugger.ex", text, config).startswith("long line")  # the file's fate before
    elided = elide_long_literals(text, config.max_line_length)
    assert rejection("lib/my_app/debugger.ex", elided, config) is None
    assert LOGO not in elided and f'      "{LOGO[:40]}...",\n' in elided
    assert elided.replace(LOGO[:40] + "...", LOGO) == text  # nothing else changed
    (module,) = parse_source(pool, "debugger.ex", elided).modules
    assert [f.name for f in module.functions] == ["style"]
    assert elide_long_literals(DEBUGGER, config.max_line_length) is DEBUGGER  # short lines: untouched


def test_the_pipeline_keeps_the_file_and_every_record_shows_the_short_literal(data_config, tmp_path):
    tree = tmp_path / "my_app" / "lib" / "my_app"
    tree.mkdir(parents=True)
    (tree / "debugger.ex").write_text(DEBUGGER.replace("LOGO", LOGO))
    data_config.sources.local.paths = (str(tmp_path / "my_app"),)
    data_config.split.validation_fraction = 0.0
    manifest = run(data_config)
    assert manifest["files"] == {"kept": 1, "skipped": 0, "skipped_by_reason": {}, "needs_newer_elixir": {}}
    mirror = Path(data_config.output_dir) / MIRROR_DIR / "train.jsonl"
    records = [json.loads(line) for line in mirror.read_text().splitlines()]
    assert {"file", "doc_to_impl", "module_explain"} <= {r["task"] for r in records}
    assert not any(LOGO[:100] in json.dumps(r) for r in records)
    (file,) = [r for r in records if r["task"] == "file"]
    assert f'"{LOGO[:40]}..."' in file["text"]
