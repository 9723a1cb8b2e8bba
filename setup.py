# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""ament_python package definition: code, console scripts and share/ data."""

from glob import glob
import os

from setuptools import find_packages, setup

package_name = 'p3d_perception'


def tree(directory):
    """(install dir, files) pairs that keep the sub-folder layout of ``directory``."""
    pairs = []
    for root, _, files in os.walk(directory):
        if files:
            pairs.append((os.path.join('share', package_name, root),
                          [os.path.join(root, f) for f in files]))
    return pairs


setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'test.*']),
    package_data={'p3d_perception.model': ['descriptions.yaml']},
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml', 'README.md']),
        ('share/' + package_name + '/launch', glob('launch/*.launch.py')),
        ('share/' + package_name + '/config', glob('config/*.yaml') + glob('config/*.rviz')
         + glob('config/*.xml')),
        *tree('models'),
    ],
    install_requires=['setuptools'],
    zip_safe=False,
    maintainer='p3d_perception maintainers',
    maintainer_email='maintainers@p3d-perception.dev',
    description='Open-vocabulary 3D object perception for ROS 2.',
    license='Apache-2.0',
    tests_require=['pytest'],
    entry_points={
        'console_scripts': [
            'perception_node = p3d_perception.ros.node:main',
            'managed_perception_node = p3d_perception.ros.managed_node:main',
            'p3d = p3d_perception.cli:main',
        ],
    },
)
