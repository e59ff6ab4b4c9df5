"""What the tests and the benchmarks share: scripted HTTP servers on loopback (`fakes`), a
worker child process with its log lines collected (`processes`), and helpers for tests that
run jobs through real services and read their runs (`jobruns`)."""
