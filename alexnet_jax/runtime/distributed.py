"""Joining a multi-process JAX job (several hosts, or several processes on one host).

`maybe_initialize` calls `jax.distributed.initialize` when the job has more than one process:
with explicit --coordinator_address/--num_processes/--process_id, or auto-detected from the
environment JAX understands (SLURM with several tasks, Cloud TPU pods, Kubernetes/JobSet,
or JAX_COORDINATOR_ADDRESS). On CPU, collectives between processes go through gloo.

Joining waits until every process has registered with the coordinator (process 0). When one
never comes, JAX itself gives up only by aborting the process from C++ (SIGABRT, a "Check
failure stack trace" that blames "another task" that died; nothing Python can catch). So a
watchdog thread ends the process first, after `timeout_s`, with one sentence and status 1;
JAX's own deadline is set a margin later.

SIGTERM stays with the process's own policy (runtime/interrupts.py). `jax.distributed.initialize`
starts JAX's preemption service, whose C++ handler replaced ours for SIGTERM: under Slurm the
trainer then never saw the signal (no "Received SIGTERM" line, no 143: a preempted job
exited 0 as if finished, so it was not requeued), and processes that had been signalled hung
at exit in the service's shutdown. Our handler is put back right after joining; the processes
still agree on the stop step (periodic.StopRequest), and Orbax's preemption check stays False.

A process that ends before the others (SIGKILL, the OOM killer, a crash) left them waiting
in their next collective or barrier until the scheduler's SIGKILL (Slurm's KillWait, 30 s
or more after it noticed) or JAX's own timeouts (100 s heartbeat, 5 min shutdown barrier).
`_JobWatch` makes every process learn of it within about a second: each process keeps a TCP
connection to process 0, which relays a death to the others; each then prints one line and
exits 1. Leaving normally goes through JAX's shutdown barrier (every process has finished)
and then says goodbye, so the end of a job is never mistaken for a death; a process that
waits there longer than LEAVE_TIMEOUT_S for the others leaves without them, status 1.

`process_count` says how many processes the job will have before anything joins, for the
per-process decisions taken before JAX starts (runtime/cpu_runtime.py).
"""

from __future__ import annotations

import atexit
import os
import secrets
import selectors
import signal
import socket
import sys
import threading

from absl import logging

from alexnet_jax.errors import UsageError, UserError

# JAX's own initialization deadline is this much later than ours, so that ours fires first.
_JAX_TIMEOUT_MARGIN_S = 60
TIMEOUT_STATUS = 1
# At the end, a process waits this long for the others at JAX's shutdown barrier (JAX: 5 min).
# After the last collective they only write local files, so a longer wait means one is stuck.
LEAVE_TIMEOUT_S = 60
PEER_DIED_STATUS = 1
_WATCH_KEY = "alexnet_jax/job_watch"
_WATCH_SETUP_S = 60
_BYE = b"bye\n"


def _cluster_detected(environ=os.environ) -> bool:
  if environ.get("JAX_COORDINATOR_ADDRESS"):
    return True
  if int(environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in environ:
    return True
  if environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0:  # a multi-host TPU slice
    return True
  return bool(environ.get("JOBSET_NAME") and environ.get("JAX_NUM_PROCESSES"))


def process_count(num_processes: int | None = None, environ=os.environ) -> int:
  """The number of processes the job will have, known before joining: `num_processes`
  (--num_processes) when given, else from the environment JAX detects the job from
  (JAX_NUM_PROCESSES, Slurm's SLURM_NTASKS, the hosts of a Cloud TPU slice); 1 for a
  single-process run (as `maybe_initialize` decides it). A detected cluster whose size is not
  in the environment counts as 2: these decisions need only "one or several"."""
  if num_processes:
    return int(num_processes)
  if not _cluster_detected(environ):
    return 1
  if environ.get("JAX_NUM_PROCESSES", "").strip().isdigit():
    return int(environ["JAX_NUM_PROCESSES"])
  if "SLURM_JOB_ID" in environ and environ.get("SLURM_NTASKS", "").strip().isdigit():
    return int(environ["SLURM_NTASKS"])
  hosts = [h for h in environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
  return len(hosts) if len(hosts) > 1 else 2


def _reclaim_sigterm() -> None:
  """Puts the process's Python SIGTERM handler back after JAX's preemption service installed
  its own in C++ (module docstring). Only when Python code chose one (runtime/interrupts.py,
  or a library user's handler): with the default disposition JAX's stays in place."""
  if threading.current_thread() is not threading.main_thread():
    return
  handler = signal.getsignal(signal.SIGTERM)  # what Python installed, not what is in force
  if callable(handler):
    signal.signal(signal.SIGTERM, handler)


class _JobWatch:
  """Ends this process within about a second when another process of the job ends before
  finishing (module docstring). Process 0 listens on a port it publishes in JAX's key-value
  store with a random token; every other process connects and says `TOKEN INDEX`. A
  connection that closes without `bye` is a death: process 0 tells the others which process
  died, and every process prints one line and exits PEER_DIED_STATUS. Connections that do not
  present the token are ignored. Setting up never fails a job: without it, only the speed
  of stopping after a death is lost."""

  def __init__(self, client, index: int, count: int, coordinator_host: str):
    self._client = client
    self._index = index
    self._count = count
    self._host = coordinator_host
    self._finished = threading.Event()  # after the shutdown barrier: closes are goodbyes
    self._lock = threading.Lock()
    self._peers: dict[int, socket.socket] = {}  # process 0: index -> connection
    self._hub: socket.socket | None = None  # other processes: the connection to process 0

  def start(self) -> None:
    target = self._serve if self._index == 0 else self._join
    threading.Thread(target=target, name="job-watch", daemon=True).start()
    atexit.register(self._leave)  # after JAX's own hook, so it runs first

  # -- process 0 -----------------------------------------------------------------------
  def _serve(self) -> None:
    try:
      if socket.has_dualstack_ipv6():
        server = socket.create_server(("", 0), family=socket.AF_INET6, dualstack_ipv6=True)
      else:
        server = socket.create_server(("", 0))
      token = secrets.token_hex(16)
      self._client.key_value_set(_WATCH_KEY, f"{server.getsockname()[1]} {token}")
    except Exception as e:  # noqa: BLE001 - see the class docstring
      logging.warning("Job watch off (%s): a process that dies stops the others only at "
                      "the scheduler's or JAX's timeouts.", e)
      return
    selector = selectors.DefaultSelector()
    selector.register(server, selectors.EVENT_READ)
    pending: dict[socket.socket, bytes] = {}  # connections that have not shown the token
    owner: dict[socket.socket, int] = {}
    while True:
      for key, _ in selector.select():
        sock = key.fileobj
        if sock is server:
          conn, _ = server.accept()
          pending[conn] = b""
          selector.register(conn, selectors.EVENT_READ)
          continue
        try:
          data = sock.recv(256)
        except OSError:
          data = b""
        if sock in pending:
          pending[sock] += data
          if data and b"\n" not in pending[sock] and len(pending[sock]) < 256:
            continue
          hello = pending.pop(sock).split(b"\n")[0].split()
          if (len(hello) == 2 and hello[0] == token.encode() and hello[1].isdigit()
              and 0 < int(hello[1]) < self._count):
            owner[sock] = int(hello[1])
            with self._lock:
              self._peers[owner[sock]] = sock
          else:  # not one of ours
            selector.unregister(sock)
            sock.close()
          continue
        if data and _BYE not in data:
          continue
        selector.unregister(sock)
        index = owner.pop(sock)
        with self._lock:
          self._peers.pop(index, None)
        if _BYE in data:
          self._finished.set()  # it passed the shutdown barrier: every process has finished
        else:
          self._died(index)

  # -- the other processes --------------------------------------------------------------
  def _join(self) -> None:
    try:
      port, token = self._client.blocking_key_value_get(
          _WATCH_KEY, _WATCH_SETUP_S * 1000).split()
      hub = socket.create_connection((self._host, int(port)), timeout=_WATCH_SETUP_S)
      hub.settimeout(None)
      hub.sendall(f"{token} {self._index}\n".encode())
    except Exception as e:  # noqa: BLE001 - see the class docstring
      logging.warning("Job watch off (%s): a process that dies stops the others only at "
                      "the scheduler's or JAX's timeouts.", e)
      return
    self._hub = hub
    received = b""
    while True:
      try:
        data = hub.recv(256)
      except OSError:
        data = b""
      received += data
      if _BYE in received:
        self._finished.set()
        return
      if data and b"\n" in received:
        word = received.split(b"\n")[0]
        self._died(int(word) if word.isdigit() else 0)
      if not data:
        self._died(0)
        return

  # -- both ------------------------------------------------------------------------------
  def _died(self, index: int) -> None:
    """Process `index` ended before finishing: tell the others (process 0), then leave."""
    if self._finished.is_set():
      return
    with self._lock:
      for conn in self._peers.values():
        try:
          conn.sendall(f"{index}\n".encode())
        except OSError:
          pass
    sys.stdout.flush()
    print(f"error: process {index} of this job ended before finishing (killed or crashed; "
          "see its own lines), so the others stop too. The newest complete checkpoint is "
          "kept: start the job again to resume from it.", file=sys.stderr, flush=True)
    os._exit(PEER_DIED_STATUS)

  def _leave(self) -> None:
    """atexit: JAX's shutdown barrier (every process has finished), then goodbye; a process
    waiting there longer than LEAVE_TIMEOUT_S leaves without the others."""
    import jax

    done = threading.Event()

    def shutdown():
      try:
        jax.distributed.shutdown()
      except Exception as e:  # noqa: BLE001 - leaving anyway
        logging.warning("JAX's distributed shutdown failed: %s", e)
      finally:
        done.set()

    threading.Thread(target=shutdown, name="distributed-shutdown", daemon=True).start()
    if not done.wait(LEAVE_TIMEOUT_S):
      sys.stdout.flush()
      print(f"error: this process finished, but the other processes of the job did not "
            f"reach the end within {LEAVE_TIMEOUT_S} s (stuck or failed; see their lines): "
            "leaving without them.", file=sys.stderr, flush=True)
      os._exit(PEER_DIED_STATUS)
    self._finished.set()
    with self._lock:
      conns = list(self._peers.values()) + ([self._hub] if self._hub is not None else [])
    for conn in conns:
      try:
        conn.sendall(_BYE)
      except OSError:
        pass


def _watch_job() -> None:
  """Starts the job watch (`_JobWatch`) after joining."""
  import jax
  from jax._src import distributed as jax_distributed  # the client: no public accessor

  state = jax_distributed.global_state
  client = getattr(state, "client", None)
  address = getattr(state, "coordinator_address", None) or ""
  if client is None or ":" not in address:
    return
  host = address.rsplit(":", 1)[0].strip("[]")
  _JobWatch(client, jax.process_index(), jax.process_count(), host).start()


def _describe_job(coordinator_address: str | None, num_processes: int | None) -> tuple[str, str]:
  """(how many processes, at which address) as far as known before JAX detects the cluster."""
  count = num_processes or os.environ.get("JAX_NUM_PROCESSES") or os.environ.get("SLURM_NTASKS")
  address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
  return (f"{count} processes" if count else "the processes of the detected cluster",
          address or "the coordinator address JAX detects (process 0's host)")


def _exit_after(timeout_s: float, joined: threading.Event, message: str) -> None:
  """Watchdog thread: unless `joined` is set within timeout_s, prints `message` as the one
  error line and ends the process (the main thread is stuck in C++, nothing else can)."""
  if joined.wait(timeout_s):
    return
  sys.stdout.flush()
  print(f"error: {message}", file=sys.stderr, flush=True)
  os._exit(TIMEOUT_STATUS)


def maybe_initialize(coordinator_address: str | None, num_processes: int | None,
                     process_id: int | None, timeout_s: float = 300) -> None:
  """Joins a multi-process JAX job: with the explicit coordinator address, process count
  and index when given, or detected (SLURM, Cloud TPU, Kubernetes); a no-op for one process.
  Must run before anything creates a JAX backend.

  timeout_s: seconds to wait for every process to join (config `distributed_timeout_s`).
  When they have not all joined by then, prints one `error:` line naming the address, the
  process count and the timeout, and ends this process with status 1 at once (os._exit: JAX
  is still blocked in C++ and would otherwise abort the process itself later). Raises
  UserError for a non-positive timeout_s or an incomplete explicit job description.
  """
  import jax  # here: process_count() runs before JAX may be imported (cpu_runtime)

  explicit = coordinator_address is not None
  if explicit and (num_processes is None or process_id is None):
    raise UsageError("--coordinator_address needs --num_processes and --process_id too.")
  if not explicit and not _cluster_detected():
    return  # a single-process run
  if not timeout_s > 0:
    raise UserError(f"distributed_timeout_s={timeout_s} must be a positive number of seconds.")
  # Must be set before the backend starts; harmless on GPU/TPU, needed for CPU processes.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  count, address = _describe_job(coordinator_address, num_processes)
  who = f"process {process_id}" if explicit else "this process"
  logging.info("Waiting for %s at %s (timeout %g s, distributed_timeout_s) as %s.", count,
               address, timeout_s, who)
  joined = threading.Event()
  message = (f"{who} waited {timeout_s:g} s for {count} to join at {address}, and not all "
             "did: start every process with the same coordinator address and process count, "
             "check that process 0 is running and its address and port are reachable from "
             "every host, or raise --config.distributed_timeout_s.")
  threading.Thread(target=_exit_after, args=(timeout_s, joined, message),
                   name="distributed-join-watchdog", daemon=True).start()
  jax_timeout = int(timeout_s) + _JAX_TIMEOUT_MARGIN_S
  try:
    if explicit:
      jax.distributed.initialize(coordinator_address=coordinator_address,
                                 num_processes=num_processes, process_id=process_id,
                                 initialization_timeout=jax_timeout)
    else:
      jax.distributed.initialize(initialization_timeout=jax_timeout)
  finally:
    joined.set()
  _reclaim_sigterm()
  _watch_job()
  logging.info("Process %d of %d joined; %d local / %d global devices.", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
