"""The operators' read/act layer under ``omniq-tasks queues|jobs|groups|...`` (and the dashboard).

It reads only the protocol's own keys (stats, lanes, idx mirrors, job hashes, group
keys) plus our extensions (worker records), so it shows queues fed by any OmniQ SDK;
it acts only through the protocol's scripts and our extension scripts. Each module
takes an :class:`~omniq_tasks.protocol.client.OmniqClient`:

- :mod:`.queues`: which queues exist (one cached paged SCAN, plus what workers announce), one row each;
- :mod:`.jobs`: a lane's jobs page by page, one job in full;
- :mod:`.groups`: a queue's groups page by page, and a group's limit;
- :mod:`.actions`: pause/resume, retry, remove, purge (in batches), publish;
- :mod:`.workers`: the running workers' records;
- :mod:`.formatting`: times and durations for people.
"""
