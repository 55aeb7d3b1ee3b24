"""core: what every layer stands on (paths, atomic files, profiles, device, artifacts, data, report, plotting).

It imports nothing else of nanolm."""
