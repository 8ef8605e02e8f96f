"""Backends that installed packages declare in the ``pydantic_toast.backends`` entry points.

Each test installs a package the way pip leaves one on disk (a module and its ``.dist-info``
folder with ``entry_points.txt``) in a folder put on ``sys.path``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from uuid import uuid4

import pytest

from pydantic_toast import (
    ExternalBaseModel,
    ExternalConfigDict,
    StorageConfigurationError,
    UnknownSchemeError,
    register_backend,
    unregister_backend,
)
from pydantic_toast.backends.memory import MemoryBackend
from pydantic_toast.testing import isolated_storage

PLUGIN_SOURCE = '''
from pydantic_toast.backends.memory import MemoryBackend


class PluginBackend(MemoryBackend):
    """A memory store under another scheme, as a package would ship its own backend."""


class PurgingBackend(MemoryBackend):
    """Keeps expired records until purged: three of them, once."""

    expired = 3

    async def purge_expired(self, *, limit: int) -> int:
        purged, type(self).expired = type(self).expired, 0
        return purged


class NotABackend:
    pass
'''

Install = Callable[..., str]


@pytest.fixture
def install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Install:
    """``install(scheme, target=...)`` installs a package declaring ``scheme``; returns the
    package's module name (new for each package, so no test sees another's import)."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))

    def installed(
        scheme: str, target: str = "PluginBackend", *, source: str = PLUGIN_SOURCE
    ) -> str:
        module = f"toast_plugin_{uuid4().hex[:12]}"
        (site / f"{module}.py").write_text(source)
        info = site / f"{module}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(
            f"[pydantic_toast.backends]\n{scheme} = {module}:{target}\n"
        )
        monkeypatch.delitem(sys.modules, module, raising=False)
        return module

    return installed


def model_on(url: str) -> type[ExternalBaseModel]:
    class Note(ExternalBaseModel):
        text: str
        model_config = ExternalConfigDict(
            storage=url, external_name=f"Note{uuid4().hex}", concurrency="last-write-wins"
        )

    return Note


def test_an_installed_scheme_serves_models_without_registering(install: Install) -> None:
    """A package declaring scheme ``plug`` makes ``plug://`` URLs work: its module is imported
    at the first model using the scheme, not before."""
    module = install("plug")
    with isolated_storage() as storage:
        assert "plug" in storage.registry.schemes()
        assert module not in sys.modules
        note = model_on(f"plug://{uuid4().hex}")
        assert module in sys.modules
        assert storage.registry.class_for("plug").__module__ == module
        assert note.model_validate(note(text="from a plugin").model_dump()).text == "from a plugin"


def test_an_installed_entry_point_that_cannot_load_names_the_package(install: Install) -> None:
    """An entry point whose module fails to import is a StorageConfigurationError at the class
    statement naming the scheme, the package and the import error."""
    module = install("brokenplug", source="import a_module_that_is_not_installed\n")
    with isolated_storage(), pytest.raises(StorageConfigurationError) as info:
        model_on(f"brokenplug://{uuid4().hex}")
    message = str(info.value)
    assert "'brokenplug'" in message
    assert module in message
    assert "a_module_that_is_not_installed" in message
    assert "reinstall" in message


def test_an_installed_entry_point_naming_no_backend_is_refused(install: Install) -> None:
    """An entry point naming a class that is no StorageBackend is refused as register_backend
    refuses it, naming the package."""
    module = install("oddplug", "NotABackend")
    with isolated_storage(), pytest.raises(StorageConfigurationError) as info:
        model_on(f"oddplug://{uuid4().hex}")
    assert "not a StorageBackend subclass" in str(info.value)
    assert module in str(info.value)


def test_two_packages_declaring_one_scheme_are_refused(install: Install) -> None:
    """Two packages with different backends for one scheme: neither is picked silently."""
    first = install("twice")
    second = install("twice")
    with isolated_storage(), pytest.raises(StorageConfigurationError) as info:
        model_on(f"twice://{uuid4().hex}")
    assert first in str(info.value)
    assert second in str(info.value)
    assert "register_backend('twice'" in str(info.value)


def test_registering_and_unregistering_an_installed_scheme(install: Install) -> None:
    """register_backend overrides an installed scheme; unregister_backend forgets it for
    good; a built-in scheme is never taken over by a package."""
    install("plugged")
    install("memory")
    with isolated_storage() as storage:
        register_backend("plugged", MemoryBackend)
        assert storage.registry.class_for("plugged") is MemoryBackend
        unregister_backend("plugged")
        assert "plugged" not in storage.registry.schemes()
        with pytest.raises(UnknownSchemeError):
            storage.registry.class_for("plugged")
        assert storage.registry.class_for("memory") is MemoryBackend


def test_the_unknown_scheme_message_names_entry_points() -> None:
    """The message for a scheme nothing serves says how a package declares one."""
    with isolated_storage(), pytest.raises(UnknownSchemeError) as info:
        model_on(f"nothingserves://{uuid4().hex}")
    assert "'pydantic_toast.backends' entry-point group" in str(info.value)


def test_the_purge_command_serves_an_installed_backend_that_purges(
    install: Install, capsys: pytest.CaptureFixture[str]
) -> None:
    """``pydantic-toast purge`` runs an installed backend's purge_expired; it answered that
    any scheme but PostgreSQL's and SQLite's "stores no records with a ttl"."""
    from pydantic_toast.integrations.cli import main

    install("purging", "PurgingBackend")
    install("plainplug")
    assert main(["purge", f"purging://{uuid4().hex}"]) == 0
    assert "purged 3 expired records" in capsys.readouterr().out
    assert main(["purge", f"plainplug://{uuid4().hex}"]) != 0
    assert "plainplug:// deletes each expired record itself" in capsys.readouterr().err
