"""The package's import graph (docs/architecture.md): no module imports, directly or through others, a module that
imports it back. Function-level (lazy) imports and ``TYPE_CHECKING`` imports count. The layer and forbidden-import
contracts are checked by ``lint-imports`` (``make lint``)."""
import grimp


def test_the_import_graph_has_no_cycle():
    graph = grimp.build_graph("didi")
    cycles = sorted(
        f"{importer} -> {imported} -> ... -> {importer}"
        for importer in graph.modules
        for imported in graph.find_modules_directly_imported_by(importer)
        if graph.chain_exists(importer=imported, imported=importer)
    )
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_graph_sees_lazy_imports():
    """The check above is only as good as the graph: the lazy import inside ``didi.load`` must be in it."""
    graph = grimp.build_graph("didi")
    assert "didi.pipelines.load" in graph.find_modules_directly_imported_by("didi")
    assert "didi.recipes.evaluate.runner" in graph.find_modules_directly_imported_by("didi.cli.commands")
