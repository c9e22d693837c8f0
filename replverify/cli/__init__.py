"""The click command line: a thin layer over the Python API, its config profiles, and
what it writes to the terminal. It owns option parsing, profile defaults, rendering a
report to its destination, progress on stderr, and every exit code.

The top layer: imports anything below it; nothing in the package imports it. Inside it,
command modules import only the shared modules, and ``main`` imports the commands::

    main.py       the root group (--profile, --config, --verbose), profile defaults from
                  the commands' parameters, the last catch of errors; registers the commands
    diff.py       diff, once or --every (with its metrics exporter)
    lag.py        lag, sampled once or until Ctrl-C (with its metrics exporter)
    reconcile.py  reconcile, and its replay script
    failover.py   gate, failback, health
    files.py      files: directory and object-store copies, an Azure account's RPO
    demo.py       demo
    options.py    option blocks the commands share; paths to write checked up front
    console.py    reports to stdout or --output (coloured from their tones), errors, run_async
    progress.py   progress lines on stderr (diff's rows per table, files' objects)
    config.py     replverify.toml: parsing, ${VAR} expansion, profiles
    logs.py       logging to stderr (--verbose)
"""
