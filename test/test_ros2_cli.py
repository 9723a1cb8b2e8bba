# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""The README's ROS commands, run as written with the real ros2 CLI and launch system.

`make test` installs the upstream tools from ../shared/ros2_tools (they are not on
PyPI); without them these tests skip with that reason. Each test starts real
processes: `ros2 launch p3d_perception perception.launch.py` with a synthetic bag played
by the project's own player, then `ros2 topic`, `ros2 service call`, `ros2 param` and
`ros2 lifecycle` against it, and a clean Ctrl-C at the end.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
HAVE_CLI = (shutil.which('ros2') is not None
            and importlib.util.find_spec('ros2cli') is not None
            and importlib.util.find_spec('launch_ros') is not None)
needs_cli = pytest.mark.skipif(
    not HAVE_CLI, reason='the upstream ros2 CLI / launch tools are not installed (make test '
                         'installs them from ../shared/ros2_tools when that folder exists)')
#: what a shutdown must never print (issue: Ctrl-C raced the executor)
SHUTDOWN_NOISE = ('never retrieved', 'Failed to publish', 'cannot use Destroyable',
                  'Traceback')


def ros2(*args, timeout=60.0, check=True) -> str:
    """Run the ros2 CLI; with check=False a call that times out answers ''."""
    try:
        proc = subprocess.run(['ros2', *args], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        if check:
            raise
        return ''
    out = proc.stdout + proc.stderr
    if check:
        assert proc.returncode == 0, f'ros2 {" ".join(args)} failed:\n{out}'
    return out


def wait_for(predicate, timeout=90.0, period=1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(period)
    return predicate()


class Launched:
    """A process group started like a user starts it, stopped with Ctrl-C (SIGINT)."""

    def __init__(self, cmd: list[str], log: Path):
        self.log = log
        self._file = open(log, 'w')  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self._file, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def text(self) -> str:
        if not self._file.closed:
            self._file.flush()
        return self.log.read_text(errors='replace')

    def stop(self, timeout=30.0) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._file.close()
        return self.proc.returncode


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.fixture(scope='module', autouse=True)
def own_ros_domain():
    """Run this module's processes on a DDS domain of their own.

    Earlier tests start nodes in the pytest process itself, and other runs may share the
    machine: none of their participants, live or lingering, then answers this module's
    `ros2` calls. The CLI daemon of that domain is stopped at the end.
    """
    old = os.environ.get('ROS_DOMAIN_ID')
    # conftest.py puts the rest of the suite on 30-99
    os.environ['ROS_DOMAIN_ID'] = str(10 + os.getpid() % 20)
    yield
    if HAVE_CLI:
        subprocess.run(['ros2', 'daemon', 'stop'], capture_output=True, timeout=60)
    if old is None:
        del os.environ['ROS_DOMAIN_ID']
    else:
        os.environ['ROS_DOMAIN_ID'] = old


@pytest.fixture(scope='module')
def scene_bag(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp('bag') / 'table'
    subprocess.run([sys.executable, '-m', 'p3d_perception.cli', 'synth', 'scenes', '--out',
                    str(out), '--scenes', '1', '--frames-per-scene', '4', '--seed', '5',
                    '--camera', 'd435', '--objects', '4'], check=True, timeout=300,
                   capture_output=True)
    return out


def _flat(params: dict, prefix: str = '') -> dict:
    """`ros2 param dump` nests dotted names (segmentation: {crop_max: ...}); flatten them."""
    out = {}
    for key, value in params.items():
        if isinstance(value, dict):
            out.update(_flat(value, f'{prefix}{key}.'))
        else:
            out[f'{prefix}{key}'] = value
    return out


def _params_dump(node: str) -> dict:
    return _flat(yaml.safe_load(ros2('param', 'dump', node))[node]['ros__parameters'])


@needs_cli
def test_package_is_found_by_ros2_pkg_and_run():
    prefix = ros2('pkg', 'prefix', 'p3d_perception').strip()
    assert (Path(prefix) / 'share' / 'p3d_perception' / 'launch'
            / 'perception.launch.py').is_file()
    exes = ros2('pkg', 'executables', 'p3d_perception')
    assert 'p3d_perception perception_node' in exes
    assert 'p3d_perception managed_perception_node' in exes
    args = ros2('launch', 'p3d_perception', 'perception.launch.py', '--show-args')
    for name in ('input_qos', 'managed', 'autostart', 'respawn', 'bag', 'rviz', 'namespace'):
        assert f"'{name}'" in args


@needs_cli
def test_launch_with_a_bag_detections_queries_params_and_clean_shutdown(scene_bag, tmp_path):
    """The README's demo flow: launch with bag:=, see detections, ask, tune, Ctrl-C."""
    launch = Launched(['ros2', 'launch', 'p3d_perception', 'perception.launch.py',
                       f'bag:={scene_bag}', 'rviz:=true', 'bag_rate:=2.0'],
                      tmp_path / 'launch.log')
    try:
        # bag:= alone is enough: sim time is switched on, no frame is dropped as stale
        echo = wait_for(lambda: 'label:' in (out := ros2(
            'topic', 'echo', '--once', '/p3d/detections', timeout=60, check=False)) and out,
            timeout=120)
        assert echo, launch.text()
        assert 'rviz2 is not installed' in launch.text()
        answer = ros2('service', 'call', '/query_object',
                      'p3d_perception_interfaces/srv/QueryObject',
                      "{query: 'a mug', top_k: 3, min_score: 0.0}")
        assert 'success=True' in answer, answer
        bad = ros2('service', 'call', '/query_object',
                   'p3d_perception_interfaces/srv/QueryObject', "{query: ''}")
        assert 'success=False' in bad and 'empty' in bad

        node = '/p3d_perception'
        assert _params_dump(node)['vocabulary'] == []        # bulk get works
        assert 'Set parameter successful' in ros2(
            'param', 'set', node, 'vocabulary', "['mug', 'bowl', 'screwdriver', 'apple']")
        assert "['mug', 'bowl', 'screwdriver', 'apple']" in ros2('param', 'get', node,
                                                                 'vocabulary')
        assert 'Set parameter successful' in ros2('param', 'set', node, 'vocabulary', '[]')
        assert 'String values are: []' in ros2('param', 'get', node, 'vocabulary')
        for corner, value in (('crop_min', '[-1.0, -1.0, 0.1]'), ('crop_max', '[1.0, 1.0, 3.0]')):
            out = ros2('param', 'set', node, f'segmentation.{corner}', value)
            assert 'Set parameter successful' in out, out
        assert 'Set parameter successful' in ros2('param', 'set', node, 'segmentation.up', '[]')
        refused = ros2('param', 'set', node, 'memory.expire_s', '.nan', check=False)
        assert 'Setting parameter failed' in refused and 'out of range' in refused
        refused = ros2('param', 'set', node, 'top_k', '0', check=False)
        assert 'Setting parameter failed' in refused

        diag = ros2('topic', 'echo', '--once', '/diagnostics', timeout=30)
        assert 'processed' in diag and 'rate_hz' in diag

        dumped = tmp_path / 'dump.yaml'
        dumped.write_text(ros2('param', 'dump', node))
    finally:
        rc = launch.stop()
    text = launch.text()
    assert rc == 0, text
    for noise in SHUTDOWN_NOISE:
        assert noise not in text, text
    assert not _group_alive(launch.proc.pid), 'a process of the launch outlived it'

    # the dump round-trips through --params-file
    again = Launched(['ros2', 'run', 'p3d_perception', 'perception_node', '--ros-args',
                      '--params-file', str(dumped)], tmp_path / 'rerun.log')
    try:
        assert wait_for(lambda: 'ready:' in again.text(), timeout=90), again.text()
        params = _params_dump('/p3d_perception')
        want = _flat(yaml.safe_load(dumped.read_text())['/p3d_perception']['ros__parameters'])
        assert want['vocabulary'] == [] and want['segmentation.up'] == []
        assert params['segmentation.crop_max'] == [1.0, 1.0, 3.0]
        assert {k: params[k] for k in want} == want
    finally:
        assert again.stop() == 0, again.text()


@needs_cli
def test_managed_node_lifecycle_transitions(scene_bag, tmp_path):
    node = Launched(['ros2', 'run', 'p3d_perception', 'managed_perception_node', '--ros-args',
                     '-p', 'use_sim_time:=true', '-r', 'points:=/camera/depth/color/points'],
                    tmp_path / 'managed.log')
    player = None
    try:
        assert wait_for(lambda: 'unconfigured' in node.text(), timeout=60), node.text()
        # the first call may wait for discovery of the node's lifecycle services (the CLI
        # daemon still knows the previous test's node by the same name): ask again
        assert wait_for(lambda: 'unconfigured' in ros2('lifecycle', 'get', '/p3d_perception',
                                                       timeout=20, check=False),
                        timeout=120), node.text()
        assert 'Transitioning successful' in ros2('lifecycle', 'set', '/p3d_perception',
                                                  'configure', timeout=120)
        inactive = ros2('service', 'call', '/query_object',
                        'p3d_perception_interfaces/srv/QueryObject', "{query: 'a mug'}")
        assert 'success=False' in inactive and 'not active' in inactive
        assert 'Transitioning successful' in ros2('lifecycle', 'set', '/p3d_perception',
                                                  'activate')
        player = Launched(['p3d', 'play', str(scene_bag), '--loop', '--clock'],
                          tmp_path / 'player.log')
        assert wait_for(lambda: 'label:' in ros2('topic', 'echo', '--once', '/p3d/detections',
                                                 timeout=60, check=False), timeout=120)
        assert 'success=True' in ros2('service', 'call', '/query_object',
                                      'p3d_perception_interfaces/srv/QueryObject',
                                      "{query: 'a mug'}")
        assert 'Transitioning successful' in ros2('lifecycle', 'set', '/p3d_perception',
                                                  'deactivate')
        assert 'inactive' in ros2('lifecycle', 'get', '/p3d_perception')
        info = ros2('topic', 'info', '/camera/depth/color/points')
        assert 'Subscription count: 0' in info          # no camera input while inactive
        assert 'Transitioning successful' in ros2('lifecycle', 'set', '/p3d_perception',
                                                  'cleanup')
        assert 'unconfigured' in ros2('lifecycle', 'get', '/p3d_perception')
    finally:
        if player is not None:
            player.stop()
        assert node.stop() == 0, node.text()
    for noise in SHUTDOWN_NOISE:
        assert noise not in node.text(), node.text()


@needs_cli
def test_launch_managed_autostart(tmp_path):
    launch = Launched(['ros2', 'launch', 'p3d_perception', 'perception.launch.py',
                       'managed:=true', 'autostart:=true'], tmp_path / 'auto.log')
    try:
        assert wait_for(lambda: 'active' in ros2('lifecycle', 'get', '/p3d_perception',
                                                 timeout=20, check=False).split('[')[0],
                        timeout=120), \
            launch.text()
        assert 'process has finished' not in launch.text(), launch.text()
    finally:
        assert launch.stop() == 0, launch.text()


@needs_cli
def test_launch_stops_when_the_bag_player_fails(tmp_path):
    # a bag that cannot be played stops the whole launch, instead of an idle node
    broken = Launched(['ros2', 'launch', 'p3d_perception', 'perception.launch.py',
                       f'bag:={tmp_path / "missing_bag"}'], tmp_path / 'broken.log')
    broken.proc.wait(timeout=120)
    text = broken.text()
    broken.stop()
    assert 'bag not found' in text and 'stopping the launch' in text, text
    assert not _group_alive(broken.proc.pid)


@needs_cli
@pytest.mark.parametrize('args, reason', [
    (['-p', 'top_k:=0'], 'top_k'),
    (['-p', 'top_k:=five'], 'top_k'),
    (['--params-file', '/nonexistent/params.yaml'], 'params'),
    (['-p', 'descriptions_file:=/nonexistent/lines.yaml'], 'lines.yaml'),
    (['-p', 'memory.expire_s:=.nan'], 'memory.expire_s'),
])
def test_bad_startup_parameters_print_one_line(args, reason):
    proc = subprocess.run(['ros2', 'run', 'p3d_perception', 'perception_node', '--ros-args',
                           *args], capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert 'cannot start:' in out and reason in out, out
    assert 'Traceback' not in out, out
