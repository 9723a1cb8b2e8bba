# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""What the launch file decides at launch time, kept here so it is tested without launch.

- which bag player exists (``ros2 bag`` where rosbag2 is installed, else ``p3d play``);
- an RViz config whose topics are the ones this launch really uses (namespace and
  ``input_topic`` applied), since a ``.rviz`` file cannot hold substitutions;
- whether rviz2 exists at all, so ``rviz:=true`` on a headless robot warns instead of
  aborting the launch and orphaning the node.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path
import shutil
import tempfile

#: topics of the node named in config/p3d.rviz, relative to the node's namespace
NODE_TOPICS = ('/p3d/clusters', '/p3d/markers', '/p3d/query_markers')
#: the input topic named in config/p3d.rviz
TEMPLATE_INPUT = '/camera/depth/color/points'


def resolve(topic: str, namespace: str) -> str:
    """The absolute name of ``topic`` for a node in ``namespace`` (as rcl resolves it)."""
    if topic.startswith('/'):
        return topic
    ns = '/' + namespace.strip('/') if namespace.strip('/') else ''
    return f'{ns}/{topic}'


def rviz_config(template: str | Path, namespace: str, input_topic: str,
                out_dir: str | Path | None = None) -> Path:
    """Write the RViz config with this launch's topic names; return its path."""
    text = Path(template).read_text(encoding='utf-8')
    text = text.replace(f'Value: {TEMPLATE_INPUT}\n',
                        f'Value: {resolve(input_topic, namespace)}\n')
    for topic in NODE_TOPICS:
        text = text.replace(f'Value: {topic}\n', f'Value: {resolve(topic[1:], namespace)}\n')
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    out = Path(out_dir or tempfile.gettempdir()) / f'p3d_perception_{digest}.rviz'
    tmp = out.with_suffix(f'.{os.getpid()}.tmp')
    tmp.write_text(text, encoding='utf-8')
    os.replace(tmp, out)
    return out


def have_rviz() -> bool:
    """True when an rviz2 executable is installed (ament index or PATH)."""
    try:
        from ament_index_python.packages import get_package_prefix
        get_package_prefix('rviz2')
        return True
    except Exception:  # noqa: BLE001 - missing package or no ament index
        return shutil.which('rviz2') is not None


def have_ros2_bag() -> bool:
    """True when ``ros2 bag play`` can run (the ros2bag verb and rosbag2_py)."""
    return (shutil.which('ros2') is not None
            and importlib.util.find_spec('ros2bag') is not None
            and importlib.util.find_spec('rosbag2_py') is not None)


def player_command(bag: str, input_topic: str, namespace: str, rate: str = '1.0'
                   ) -> list[str]:
    """The command that plays ``bag`` in a loop with /clock, its cloud on the input topic."""
    remap = f'/camera/depth/color/points:={resolve(input_topic, namespace)}'
    if have_ros2_bag():
        return ['ros2', 'bag', 'play', bag, '--loop', '--clock', '--rate', rate,
                '--remap', remap]
    p3d = shutil.which('p3d') or 'p3d'
    return [p3d, 'play', bag, '--loop', '--clock', '--rate', rate, '--remap', remap]
