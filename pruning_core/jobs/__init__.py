"""The job system (top floor): jobs as worker processes with progress, cancel and resume, over the store."""
