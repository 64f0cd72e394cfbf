"""The served models: loading, hot reload by polling the repository, atomic swaps, shutdown.

For every model folder (or only ``Settings.model``) the versions that ``config.pbtxt``'s ``version_policy``
selects are served (Triton's rules, :class:`rescom.model_repository.VersionPolicy`; ``latest 1`` when there is
no file or no policy): ``latest N`` serves the N newest versions that load, ``all`` every version,
``specific`` exactly the listed ones. Requests without a version go to the highest served version (Triton
too); ``?version=`` and ``/v2/models/NAME/versions/V`` address the others. ``config.pbtxt`` is re-read at every
poll, so editing the policy or ``max_batch_size`` takes effect like a new version does.

Loading reads and checks ``rescom.json``, opens the graph, checks it and warms every batch size, all in a
worker thread while the current versions keep serving; then the new set of versions replaces the old one in
one assignment and versions that left it drain and close in the background. A version that fails is refused
with one log line, remembered by its files' fingerprint (so it is not retried every poll, but is retried once
the files change); under ``latest N`` the next older version takes its place, and when the policy selects
nothing that loads the versions served so far keep serving.

A request holds a lease on the version it started with (:meth:`ModelRegistry.lease`), taken before its body is
read, until it is answered; a replaced version is retired and closed when its last lease ends (a reference
count, not a fixed grace), so a slow upload or a long decode that spans a swap is still answered by the version
it started with.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from rescom.model_repository import (
    ConfigError,
    ModelConfig,
    VersionPolicy,
    config_path,
    parse_version,
    read_config,
)
from service.batcher import DynamicBatcher
from service.config import Settings
from service.errors import BadRequest, NotFound, Unavailable
from service.metrics import ServiceMetrics
from service.model_spec import (
    Fingerprint,
    ModelSpec,
    ModelSpecError,
    fingerprint,
    list_models,
    list_versions,
    read_spec,
)
from service.priors import AdaptivePrior
from service.runtime import ModelLoadError, ModelRuntime, RuntimeOptions, load_runtime

__all__ = ["ModelRegistry", "ServedModel"]

log = logging.getLogger("rescom.service.registry")


@dataclass(eq=False)  # identity: compared and looked up as one loaded instance
class ServedModel:
    """One loaded model version with its session and its batcher."""

    spec: ModelSpec
    runtime: ModelRuntime
    batcher: DynamicBatcher
    loaded_at: float = field(default_factory=time.time)
    leases: int = 0  # requests holding this version (ModelRegistry.lease)
    retired: bool = False  # replaced: closed when the last lease ends
    config_max_batch: int | None = None  # config.pbtxt's max_batch_size when loaded (an edit reloads)

    @property
    def name(self) -> str:
        """Model name."""
        return self.spec.name

    @property
    def version(self) -> int:
        """Version number."""
        return self.spec.version

    @property
    def provider(self) -> str:
        """Execution provider the session really runs on."""
        return self.runtime.provider


class ModelRegistry:
    """Loads and serves the models of one repository.

    Args:
        settings: the service settings.
        metrics: where load results and batching statistics go.
    """

    def __init__(self, settings: Settings, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.repository = settings.model_repository
        self.options = RuntimeOptions(
            providers=settings.providers,
            device_id=settings.device_id,
            intra_op_threads=settings.intra_op_threads,
            inter_op_threads=settings.inter_op_threads,
            instances=settings.instances,
            spinning=settings.ort_spinning,
            max_batch_size=settings.max_batch_size,
            batch_sizes=settings.buckets,
            pad_batches=settings.pad_batches,
            trt_cache_dir=settings.trt_cache_dir,
            trt_fp16=settings.trt_fp16,
            io_binding=None if settings.io_binding else False,  # on: GPU providers only
        )
        self._models: dict[str, ServedModel] = {}  # the default version of each model (highest served)
        self._versions: dict[str, dict[int, ServedModel]] = {}  # every served version of each model
        self._configs: dict[str, ModelConfig | None] = {}  # last readable config.pbtxt of each model
        self._config_errors: dict[str, str] = {}  # the config.pbtxt error last logged, per model
        self._adaptive: dict[str, AdaptivePrior] = {}
        self._refused: dict[tuple[str, int], Fingerprint | None] = {}
        self._known: set[str] = set()
        self._incomplete_reported: set[str] = set()  # models whose lack of a complete version was logged
        self._background: set[asyncio.Task[None]] = set()
        self._retiring: list[ServedModel] = []  # replaced versions with leases still held
        self._unloaded: set[str] = (
            set()
        )  # unloaded on request (Triton's model control); not served until loaded
        self._task: asyncio.Task[None] | None = None
        self.initial_load_done = False

    # ------------------------------------------------------------------------------------------------ queries

    @property
    def ready(self) -> bool:
        """The first load pass has finished and at least one model is served."""
        return self.initial_load_done and bool(self._models)

    def served(self) -> list[ServedModel]:
        """Served models, by name."""
        return [self._models[name] for name in sorted(self._models)]

    def known(self) -> list[str]:
        """Model names found in the repository (served or not)."""
        return sorted(self._known | set(self._models))

    def served_versions(self, name: str) -> list[ServedModel]:
        """Every served version of ``name``, ascending (empty when none)."""
        versions = self._versions.get(name) or {}
        return [versions[v] for v in sorted(versions)]

    def version_policy(self, name: str) -> VersionPolicy:
        """The version policy in force for ``name`` (``latest 1`` without a readable ``config.pbtxt``)."""
        config = self._configs.get(name)
        return config.version_policy if config is not None else VersionPolicy()

    def model_config(self, name: str) -> ModelConfig | None:
        """The last readable ``config.pbtxt`` of ``name`` (``None`` when it has none)."""
        return self._configs.get(name)

    def refused_versions(self, name: str) -> list[int]:
        """Versions of ``name`` that failed to load (until their files change)."""
        return sorted(v for (n, v) in self._refused if n == name)

    def get(self, name: str | None = None, version: str | int | None = None) -> ServedModel:
        """The served model for a request.

        Args:
            name: model name; may be omitted when one model is served (or ``Settings.model`` is set).
            version: one of the served versions; default: the highest served version.

        Raises:
            BadRequest: no name while several models are served, or a non-numeric version.
            NotFound: unknown model or version.
            Unavailable: the model exists but is not loaded (yet, or it was refused).
        """
        if name is None or name == "":
            if self.settings.model is not None:
                name = self.settings.model
            elif len(self._models) == 1:
                name = next(iter(self._models))
            elif not self._models:
                raise Unavailable("no model is loaded yet; see GET /health/ready and GET /v1/models")
            else:
                raise BadRequest(
                    f"several models are served ({', '.join(sorted(self._models))}); choose one with "
                    "model=NAME"
                )
        served = self._models.get(name)
        if served is None:
            if name in self._known:
                raise Unavailable(
                    f"model {name!r} is not loaded (still loading, or every version was refused; "
                    "see GET /v1/models)"
                )
            names = ", ".join(sorted(self._models)) or "none"
            raise NotFound(f"unknown model {name!r}; served models: {names}")
        if version is not None and version != "":
            try:
                number = parse_version(version)
            except ValueError as err:
                raise BadRequest(str(err)) from None
            versions = self._versions.get(name) or {}
            if number not in versions:
                raise NotFound(
                    f"model {name!r} version {number} is not served; served versions: "
                    f"{', '.join(map(str, sorted(versions)))} (version_policy "
                    f"{self.version_policy(name).describe()} in {name}/config.pbtxt)"
                )
            return versions[number]
        return served

    @contextlib.contextmanager
    def lease(self, name: str | None = None, version: str | int | None = None) -> Iterator[ServedModel]:
        """Hold the served model of a request until it is answered (same arguments and errors as :meth:`get`).

        Take it before reading the request body: a version swapped out meanwhile stays open until every lease
        on it has ended, then closes (:meth:`_retire`).
        """
        served = self.acquire(name, version)
        try:
            yield served
        finally:
            self.release(served)

    def acquire(self, name: str | None = None, version: str | int | None = None) -> ServedModel:
        """Take a lease without a ``with`` block (callback-driven requests); end it with :meth:`release` once."""
        served = self.get(name, version)
        served.leases += 1
        return served

    def release(self, served: ServedModel) -> None:
        """End a lease taken with :meth:`acquire`; the last lease on a retired version closes it."""
        served.leases -= 1
        if served.retired and served.leases == 0 and served in self._retiring:
            self._close_retired(served)

    def adaptive(self, name: str) -> AdaptivePrior:
        """The adaptive prior state of a served model.

        Raises:
            NotFound: the model is not served.
        """
        self.get(name)
        return self._adaptive[name]

    # ------------------------------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Check that there is something to serve, then load in the background and start polling.

        Raises:
            RuntimeError: the repository holds no model folder (or not the one ``Settings.model`` names).
        """
        names = self._names_to_serve()
        if not names:
            if self.settings.model is not None:
                raise RuntimeError(
                    f"model {self.settings.model!r} is not in the model repository "
                    f"(found: {', '.join(list_models(self.repository)) or 'nothing'})"
                )
            raise RuntimeError(
                "the model repository holds no model folder (NAME/N/model.onnx + rescom.json); "
                "export a model first (make export-digits)"
            )
        self._task = asyncio.get_running_loop().create_task(self._run(), name="model-registry")

    async def close(self, timeout_s: float) -> None:
        """Stop polling and drain every batcher (together at most ``timeout_s``)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        for task in list(self._background):
            task.cancel()
        models = [m for versions in self._versions.values() for m in versions.values()]
        models += [m for m in self._retiring if m not in models]
        self._models, self._versions = {}, {}
        self._retiring.clear()
        await asyncio.gather(*(m.batcher.close(timeout_s) for m in models), return_exceptions=True)
        for m in models:
            m.runtime.close()

    async def poll_once(self) -> None:
        """Load whatever changed in the repository since the last pass."""
        names = self._names_to_serve()
        self._known.update(names)
        for name in names:
            await self._refresh(name)

    async def load(self, name: str) -> ServedModel:
        """Serve ``name`` again after :meth:`unload` (or load it now): its newest loadable version.

        Raises:
            NotFound: ``name`` is not a model of the repository (or not the one ``Settings.model`` names).
            Unavailable: no version of it loads.
        """
        if name not in await asyncio.to_thread(self._names_to_serve, True):
            raise NotFound(f"model {name!r} is not in the model repository")
        self._unloaded.discard(name)
        self._known.add(name)
        await self._refresh(name)
        return self.get(name)

    async def unload(self, name: str) -> None:
        """Stop serving ``name`` (queued requests finish) until :meth:`load`; repository polling leaves it alone.

        Raises:
            NotFound: ``name`` is not served.
        """
        served = self._models.pop(name, None)
        if served is None:
            raise NotFound(f"model {name!r} is not loaded")
        versions = self._versions.pop(name, None) or {served.version: served}
        self._unloaded.add(name)
        for m in versions.values():
            self.metrics.retire_model(name, m.version, m.provider)
        self.metrics.ready.set(1 if self.ready else 0)
        log.info("model %s version(s) %s unloaded on request", name, sorted(versions))
        for m in versions.values():
            self._retire(m)  # closes once the requests that hold it are answered

    # ------------------------------------------------------------------------------------------------ internals

    def _names_to_serve(self, include_unloaded: bool = False) -> list[str]:
        names = list_models(self.repository)
        if self.settings.model is not None:
            names = [n for n in names if n == self.settings.model]
        if not include_unloaded:
            names = [n for n in names if n not in self._unloaded]
        return names

    async def _run(self) -> None:
        try:
            await self.poll_once()
        except Exception:
            log.exception("initial model load failed")
        self.initial_load_done = True
        self.metrics.ready.set(1 if self.ready else 0)
        if not self._models:
            log.error(
                "no model could be loaded from the repository; the service stays not-ready and keeps polling"
            )
        interval = self.settings.poll_interval_s
        if interval <= 0 and self._models:
            return
        interval = interval or 5.0
        while True:
            await asyncio.sleep(interval)
            try:
                await self.poll_once()
            except Exception:  # a bad poll must not stop future ones
                log.exception("repository poll failed")

    async def _refresh(self, name: str) -> None:
        """Serve the versions of ``name`` that the policy selects (no-op when nothing changed)."""
        config = await asyncio.to_thread(self._read_config, name)
        policy = config.version_policy if config is not None else VersionPolicy()
        versions = await asyncio.to_thread(list_versions, self.repository, name)
        fingerprints: dict[int, Fingerprint] = {}
        for version in versions:
            fp = await asyncio.to_thread(fingerprint, self.repository, name, version)
            if fp is not None:  # incomplete (rescom.json is written last): look again next poll
                fingerprints[version] = fp
        current = self._versions.get(name) or {}
        chosen = await self._choose(name, policy, config, fingerprints, current)
        if not chosen:
            self._report_nothing_served(name, versions, fingerprints, policy, current)
            return
        self._incomplete_reported.discard(name)
        if chosen.keys() != current.keys() or any(chosen[v] is not current[v] for v in chosen):
            self._swap(name, chosen, current)

    async def _choose(
        self,
        name: str,
        policy: VersionPolicy,
        config: ModelConfig | None,
        fingerprints: dict[int, Fingerprint],
        current: dict[int, ServedModel],
    ) -> dict[int, ServedModel]:
        """The served set the policy asks for: kept versions reused, new or changed ones loaded."""
        if policy.kind == "latest":  # a refused version gives its place to the next older one
            candidates, limit = sorted(fingerprints, reverse=True), policy.num_versions
        else:
            candidates, limit = policy.select(fingerprints), len(fingerprints)
        chosen: dict[int, ServedModel] = {}
        for version in candidates:
            if len(chosen) >= limit:
                break
            fp = fingerprints[version]
            kept = current.get(version)
            if (
                kept is not None
                and kept.spec.fingerprint == fp
                and kept.config_max_batch == _config_batch(config)
            ):
                chosen[version] = kept
                continue
            if self._refused.get((name, version), ()) == fp:
                continue
            loaded = await self._load(name, version, config)
            if loaded is not None:
                chosen[version] = loaded
        return chosen

    def _report_nothing_served(
        self,
        name: str,
        versions: list[int],
        fingerprints: dict[int, Fingerprint],
        policy: VersionPolicy,
        current: dict[int, ServedModel],
    ) -> None:
        """Log once why ``name`` has no version to serve now (the versions already served keep serving).

        Versions that the policy selects but that failed to load were logged when refused; nothing more is said.
        """
        if name in self._incomplete_reported or policy.select(fingerprints):
            return
        self._incomplete_reported.add(name)
        if current:
            log.error(
                "model %s: version_policy %s selects none of the complete versions %s; versions %s keep serving",
                name,
                policy.describe(),
                sorted(fingerprints) or "none",
                sorted(current),
            )
        elif not fingerprints:
            log.warning(
                "not serving model %s: no complete version (version folders: %s); a version needs "
                "%s/N/model.onnx and %s/N/rescom.json. The other models are not affected; the folder is "
                "looked at again at each repository poll (RESCOM_POLL_INTERVAL_S)",
                name,
                ", ".join(map(str, versions)) or "none",
                name,
                name,
            )
        else:
            log.warning(
                "not serving model %s: version_policy %s selects none of the complete versions %s",
                name,
                policy.describe(),
                sorted(fingerprints),
            )

    def _read_config(self, name: str) -> ModelConfig | None:
        """``config.pbtxt`` now; an unreadable file keeps the previous one (logged once per error).

        An empty file also keeps the previous one: it is what a poll sees while an editor rewrites the file in
        place (truncate, then write); an empty file would otherwise mean Triton's defaults (``latest 1``).
        """
        try:
            if name in self._configs and config_path(self.repository, name).read_bytes().strip() == b"":
                return self._configs[name]
        except OSError:
            pass  # no file (or unreadable): read_config says which
        try:
            config = read_config(self.repository, name)
            if config == ModelConfig() and name in self._configs:
                return self._configs[name]  # emptied between the two reads
        except ConfigError as err:
            if self._config_errors.get(name) != str(err):
                self._config_errors[name] = str(err)
                log.error(
                    "ignoring the edit of %s/config.pbtxt, the previous one stays in force: %s", name, err
                )
            return self._configs.get(name)
        self._config_errors.pop(name, None)
        self._configs[name] = config
        return config

    def _max_batch(self, spec: ModelSpec, config: ModelConfig | None) -> int:
        """``config.pbtxt``'s ``max_batch_size`` (else ``rescom.json``'s), capped by an explicit service setting."""
        model_limit = _config_batch(config) or spec.max_batch_size
        if "max_batch_size" in self.settings.model_fields_set:
            return min(model_limit, self.settings.max_batch_size)
        return model_limit

    async def _load(self, name: str, version: int, config: ModelConfig | None) -> ServedModel | None:
        started = time.perf_counter()
        try:
            spec = await asyncio.to_thread(read_spec, self.repository, name, version)
            max_batch = self._max_batch(spec, config)
            spec = replace(spec, max_batch_size=max_batch)
            options = replace(self.options, max_batch_size=max_batch)
            runtime = await asyncio.to_thread(load_runtime, spec, options)
        except (ModelSpecError, ModelLoadError) as err:
            self._refuse(name, version, str(err))
            return None
        except Exception as err:  # an unexpected failure in a model must not take the service down
            log.exception("model %s version %d: unexpected error while loading", name, version)
            self._refuse(name, version, f"unexpected {type(err).__name__}")
            return None
        batcher = DynamicBatcher(
            runtime.run,
            max_batch_size=runtime.max_batch_size,
            max_queue_delay_s=self.settings.max_queue_delay_ms / 1000.0,
            max_queue_size=self.settings.max_queue_size,
            name=name,
            observer=self.metrics.observer(name),
            workers=runtime.instances,
        )
        await batcher.start()
        self._refused.pop((name, version), None)
        log.info(
            "loaded model %s version %d on %s: %d classes, input %s, batch sizes %s, %d x %d ORT threads, "
            "%s; loaded and warmed in %.2f s",
            name,
            version,
            runtime.provider,
            spec.num_classes,
            list(spec.input.shape),
            list(runtime.buckets),
            runtime.instances,
            runtime.intra_op_threads,
            "batches padded" if runtime.pad else "batches not padded",
            time.perf_counter() - started,
        )
        return ServedModel(spec, runtime, batcher, config_max_batch=_config_batch(config))

    def _swap(self, name: str, chosen: dict[int, ServedModel], current: dict[int, ServedModel]) -> None:
        """Serve ``chosen`` from now on (one assignment each) and retire the versions that left."""
        default = chosen[max(chosen)]
        old_default = self._models.get(name)
        if old_default is not default:
            self._swap_adaptive(default.spec)
        self._versions[name] = chosen
        self._models[name] = default  # the swap: requests from now on use the new versions
        leaving = [m for v, m in current.items() if chosen.get(v) is not m]
        for m in leaving:
            self.metrics.retire_model(name, m.version, m.provider)
        for m in chosen.values():
            self.metrics.set_model(name, m.version, m.provider)
        self.metrics.ready.set(1 if self.ready else 0)
        log.info(
            "serving model %s version(s) %s (default %d, version_policy %s)%s",
            name,
            sorted(chosen),
            default.version,
            self.version_policy(name).describe(),
            f"; retiring {sorted(m.version for m in leaving)}" if leaving else "",
        )
        for old in leaving:
            self._retire(old)  # closes once the requests that hold it are answered

    def _refuse(self, name: str, version: int, reason: str) -> None:
        self._refused[(name, version)] = fingerprint(self.repository, name, version)
        self.metrics.load_failures.labels(name).inc()
        keeps = sorted(self._versions.get(name) or {})
        tail = ""
        if len(keeps) == 1:
            tail = f"; version {keeps[0]} keeps serving"
        elif keeps:
            tail = f"; versions {', '.join(map(str, keeps))} keep serving"
        log.error("refusing model %s version %d: %s%s", name, version, reason, tail)

    def _swap_adaptive(self, spec: ModelSpec) -> None:
        s = self.settings
        state = self._adaptive.get(spec.name)
        if state is not None and state.num_classes == spec.num_classes:
            state.temperature = spec.fitted_temperature  # the traffic did not change; keep the window
            state.class_bias = spec.class_bias
            state.train_prior = spec.train_prior
            state.confusion = getattr(spec, "confusion", None)
            return
        self._adaptive[spec.name] = AdaptivePrior(
            spec.num_classes,
            spec.fitted_temperature,
            window=s.adaptive_window,
            alpha=s.adaptive_alpha,
            update_every=s.adaptive_update_every,
            class_bias=spec.class_bias,
            estimator=s.adaptive_estimator,
            train_prior=spec.train_prior,
            confusion=getattr(spec, "confusion", None),  # calibration.confusion of rescom.json, when parsed
            n_val=int(sum(getattr(spec, "val_counts", None) or ())),  # calibration.val_counts
        )

    def _retire(self, old: ServedModel) -> None:
        """``old`` was replaced: close it now if no request holds it, else when its last lease ends."""
        old.retired = True
        if old.leases == 0:
            self._close_retired(old)
        else:
            self._retiring.append(old)
            log.info(
                "model %s version %d replaced; closes when its %d request(s) in flight are answered",
                old.name,
                old.version,
                old.leases,
            )

    def _close_retired(self, old: ServedModel) -> None:
        if old in self._retiring:  # not there any more once close() took it over
            self._retiring.remove(old)
        task = asyncio.get_running_loop().create_task(
            self._close(old), name=f"retire-{old.name}-{old.version}"
        )
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _close(self, old: ServedModel) -> None:
        await old.batcher.close(self.settings.drain_timeout_s)  # empty: every request in it held a lease
        old.runtime.close()
        log.info("model %s version %d retired", old.name, old.version)


def _config_batch(config: ModelConfig | None) -> int | None:
    """``max_batch_size`` of ``config.pbtxt`` (``None`` when absent or 0, i.e. no batching declared)."""
    return config.max_batch_size if config is not None and config.max_batch_size else None
