"""All pyinfra code: facts, operations (grouped by stage) and one deploy per stage."""
