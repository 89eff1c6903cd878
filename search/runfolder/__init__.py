"""Reading a run folder back: its config, where its teacher and data came from, its trial
records, front, pick and exports, and its study (see the README's run-folder table)."""

from protege.search.runfolder._folder import RunFolder, load_run, read_records, write_records

__all__ = ["RunFolder", "load_run", "read_records", "write_records"]
