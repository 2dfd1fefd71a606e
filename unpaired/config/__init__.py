"""What a user writes, validated and resolved once: variant specs, studies, spec files and their JSON Schema.

Belongs here: the pydantic models of spec files, reading them, merging overrides, expanding a
study into runs, resolving components. Nothing here trains, writes files or knows a run folder.
"""
