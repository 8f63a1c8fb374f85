import no_such_module_for_serve_tests  # noqa: F401 - fails on purpose
