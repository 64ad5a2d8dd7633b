"""Everything that talks to or writes Elixir, shared by the data pipeline and the evaluation.

    worker.py     long-lived `elixir` processes serving framed requests: pool, timeouts, restarts
    terms.py      the Erlang external term format those requests and replies travel in
    parser.exs    the one Elixir source reader: modules, functions, docs, specs, doctests (and Erlang terms)
    parse.py      its Python face: parse_source -> ParsedFile(Module(Function(Doctest...)))
    doctests.py   doctests -> ExUnit test modules
    quote.py      Python text -> Elixir string literals
    versions.py   the installed Elixir/OTP, syntax newer than it, MultiPL-E's Elixir

Server scripts that belong to one user live with it: the evaluation's sandboxed executor
(eval/executor.exs) and the data pipeline's OTP docs source (data_pipeline/sources/otp_docs.exs).
"""
