"""`prunescope ui`: start the dashboard on localhost."""

from __future__ import annotations

from pruning_core.cli.common import add_executor_args, executor_config_from_args


def add_ui(sub) -> None:
    p = sub.add_parser("ui", help="start the dashboard on localhost (Ctrl+C or SIGTERM stops it, server included)")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1 unless you need remote access)")
    p.add_argument("--model", default="embedded", help="model preselected in the dashboard")
    add_executor_args(p, "the points of the dashboard's sweeps, map rows, budget rounds and continual steps")
    p.set_defaults(handler=cmd_ui)


def cmd_ui(args) -> int:
    from app.launch import run_ui  # the CLI only launches the app; the core never imports streamlit

    executor = executor_config_from_args(args)  # stored in every job spec the dashboard submits
    return run_ui(port=args.port, host=args.host, model=args.model,
                  executor=executor.to_dict() if executor.kind != "local" else None)
