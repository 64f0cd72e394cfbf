"""The served models: loading, hot reload by polling the repository, atomic swaps, shutdown.

For every model folder (or only ``Settings.model``) the newest version that loads is served. Loading reads
and checks ``rescom.json``, opens the graph, checks it and warms every batch size, all in a worker thread
while the current version keeps serving; then the new version replaces the old one in one assignment and the
old one drains and closes in the background. A version that fails is refused with one log line, remembered by
its files' fingerprint (so it is not retried every poll, but is retried once the files change), and the
previous version keeps serving. Only one version per model is served (Triton's default ``latest: 1`` policy).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

from service.batcher import DynamicBatcher
from service.config import Settings
from service.errors import BadRequest, NotFound, Unavailable
from service.metrics import ServiceMetrics
from service.priors import AdaptivePrior
from service.repository import (
    Fingerprint,
    ModelSpec,
    ModelSpecError,
    fingerprint,
    list_models,
    list_versions,
    read_spec,
)
from service.runtime import ModelLoadError, ModelRuntime, RuntimeOptions, load_runtime

__all__ = ["ModelRegistry", "ServedModel"]

log = logging.getLogger("rescom.service.registry")

RETIRE_GRACE_S = 2.0  # requests that picked the old version just before a swap still reach its queue


@dataclass
class ServedModel:
    """One loaded model version with its session and its batcher."""

    spec: ModelSpec
    runtime: ModelRuntime
    batcher: DynamicBatcher
    loaded_at: float = field(default_factory=time.time)

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
        )
        self._models: dict[str, ServedModel] = {}
        self._adaptive: dict[str, AdaptivePrior] = {}
        self._refused: dict[tuple[str, int], Fingerprint | None] = {}
        self._known: set[str] = set()
        self._incomplete_reported: set[str] = set()  # models whose lack of a complete version was logged
        self._background: set[asyncio.Task[None]] = set()
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

    def refused_versions(self, name: str) -> list[int]:
        """Versions of ``name`` that failed to load (until their files change)."""
        return sorted(v for (n, v) in self._refused if n == name)

    def get(self, name: str | None = None, version: str | int | None = None) -> ServedModel:
        """The served model for a request.

        Args:
            name: model name; may be omitted when one model is served (or ``Settings.model`` is set).
            version: must equal the served version when given.

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
                number = int(version)
            except (TypeError, ValueError):
                raise BadRequest(f"version must be a positive integer, got {version!r}") from None
            if number != served.version:
                raise NotFound(
                    f"model {name!r} version {number} is not served; the served version is "
                    f"{served.version} (only the newest loadable version is loaded)"
                )
        return served

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
        models, self._models = list(self._models.values()), {}
        await asyncio.gather(*(m.batcher.close(timeout_s) for m in models), return_exceptions=True)
        for m in models:
            m.runtime.close()

    async def poll_once(self) -> None:
        """Load whatever changed in the repository since the last pass."""
        names = self._names_to_serve()
        self._known.update(names)
        for name in names:
            await self._refresh(name)

    # ------------------------------------------------------------------------------------------------ internals

    def _names_to_serve(self) -> list[str]:
        names = list_models(self.repository)
        if self.settings.model is not None:
            names = [n for n in names if n == self.settings.model]
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
        """Serve the newest loadable version of ``name`` (no-op when it is already served unchanged)."""
        current = self._models.get(name)
        versions = await asyncio.to_thread(list_versions, self.repository, name)
        complete = 0
        for version in reversed(versions):
            fp = await asyncio.to_thread(fingerprint, self.repository, name, version)
            if fp is None:
                continue  # incomplete (rescom.json is written last): look again next poll
            complete += 1
            if current is not None and current.version == version and current.spec.fingerprint == fp:
                return
            if (name, version) in self._refused and self._refused[(name, version)] == fp:
                continue
            if await self._load(name, version):
                self._incomplete_reported.discard(name)
                return
        if current is None and name not in self._models and not complete:
            if name not in self._incomplete_reported:  # once, not at every poll
                self._incomplete_reported.add(name)
                found = ", ".join(map(str, versions)) or "none"
                log.warning(
                    "not serving model %s: no complete version (version folders: %s); a version needs "
                    "%s/N/model.onnx and %s/N/rescom.json. The other models are not affected; the folder is "
                    "looked at again at each repository poll (RESCOM_POLL_INTERVAL_S)",
                    name,
                    found,
                    name,
                    name,
                )

    async def _load(self, name: str, version: int) -> bool:
        started = time.perf_counter()
        try:
            spec = await asyncio.to_thread(read_spec, self.repository, name, version)
            runtime = await asyncio.to_thread(load_runtime, spec, self.options)
        except (ModelSpecError, ModelLoadError) as err:
            return self._refuse(name, version, str(err))
        except Exception as err:  # an unexpected failure in a model must not take the service down
            log.exception("model %s version %d: unexpected error while loading", name, version)
            return self._refuse(name, version, f"unexpected {type(err).__name__}")
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
        served = ServedModel(spec, runtime, batcher)
        old = self._models.get(name)
        self._swap_adaptive(spec)
        self._models[name] = served  # the swap: requests from now on use the new version
        self._refused.pop((name, version), None)
        self.metrics.set_model(
            name, version, runtime.provider, None if old is None else (old.version, old.provider)
        )
        self.metrics.ready.set(1 if self.ready else 0)
        log.info(
            "serving model %s version %d on %s: %d classes, input %s, batch sizes %s, %d x %d ORT threads, "
            "%s; loaded and warmed in %.2f s%s",
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
            "" if old is None else f"; replaces version {old.version}",
        )
        if old is not None:
            task = asyncio.get_running_loop().create_task(
                self._retire(old), name=f"retire-{name}-{old.version}"
            )
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        return True

    def _refuse(self, name: str, version: int, reason: str) -> bool:
        self._refused[(name, version)] = fingerprint(self.repository, name, version)
        self.metrics.load_failures.labels(name).inc()
        keeps = self._models.get(name)
        tail = f"; version {keeps.version} keeps serving" if keeps is not None else ""
        log.error("refusing model %s version %d: %s%s", name, version, reason, tail)
        return False

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

    async def _retire(self, old: ServedModel) -> None:
        await asyncio.sleep(min(RETIRE_GRACE_S, self.settings.drain_timeout_s))
        await old.batcher.close(self.settings.drain_timeout_s)
        old.runtime.close()
        log.info("model %s version %d retired", old.name, old.version)
