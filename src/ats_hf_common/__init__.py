"""What ats_hf and its command line share, in plain Python (standard library only), so that `ats-hf` checks its
options and paths before torch loads: the ATS settings grammar (`grammar`), telling local paths from Hub ids and the
policy for what a command writes (`paths`), and the benchmark's defaults (`benchmark_defaults`)."""
