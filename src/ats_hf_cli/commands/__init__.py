"""One module per `ats-hf` subcommand, each of the same shape: `add_arguments(parser)` declares its options
(standard library only), and `run(args) -> int` checks them and every path before it imports a tool of `ats_hf`,
calls it, and prints."""
