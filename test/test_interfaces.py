# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""The generated interfaces work over a real DDS middleware, in-process."""

import time

from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node


def _spin_until(executor, predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate():
        executor.spin_once(timeout_sec=0.05)
    return predicate()


def test_detection_message_fields(interfaces):
    msg, _ = interfaces
    d = msg.Detection(object_id=7, label='mug', score=0.8, point_count=120,
                      alternative_labels=['mug', 'cup'], alternative_scores=[0.8, 0.1])
    d.header.frame_id = 'camera'
    d.size.x = 0.1
    arr = msg.DetectionArray(detections=[d])
    assert arr.detections[0].label == 'mug'
    assert list(arr.detections[0].alternative_labels) == ['mug', 'cup']
    assert abs(arr.detections[0].size.x - 0.1) < 1e-9


def test_query_object_round_trip_over_dds(interfaces, rclpy_context):
    msg, srv = interfaces
    server = Node('query_server', context=rclpy_context)
    client_node = Node('query_client', context=rclpy_context)
    seen = []

    def handle(request, response):
        seen.append((request.query, request.top_k, request.min_score))
        match = msg.Detection(object_id=3, label='mug', score=0.9)
        response.success = True
        response.message = f'1 match for {request.query!r}'
        response.matches = [match]
        response.scores = [0.75]
        return response

    server.create_service(srv.QueryObject, '/query_object', handle)
    client = client_node.create_client(srv.QueryObject, '/query_object')
    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(server)
    executor.add_node(client_node)
    try:
        assert _spin_until(executor, client.service_is_ready), 'service never became ready'
        future = client.call_async(srv.QueryObject.Request(query='a mug', top_k=2,
                                                           min_score=0.25))
        assert _spin_until(executor, future.done), 'no response over DDS'
        response = future.result()
    finally:
        executor.shutdown()
        server.destroy_node()
        client_node.destroy_node()
    assert seen == [('a mug', 2, 0.25)]
    assert response.success
    assert response.matches[0].object_id == 3
    assert abs(response.scores[0] - 0.75) < 1e-6


def test_demo_report_judges_named_objects_and_not_the_worlds_distractors(interfaces):
    """The demo's score: a label is judged against the nearest ground-truth object.

    The synthetic world's distractor blobs ('unknown') belong to no category the
    model could name, so a detection on one is shown and not counted either way.
    """
    import numpy as np
    from p3d_perception.ros import demo_report
    msg, _ = interfaces

    def det(i, label, x):
        d = msg.Detection(object_id=i, label=label, score=0.9, point_count=500,
                          alternative_labels=[label], alternative_scores=[0.9])
        d.pose.position.x, d.pose.position.z = x, 1.0
        return d

    def obj(category, x):
        pose = np.eye(4)
        pose[:3, 3] = (x, 0.0, 0.95)
        return {'category': category, 'pose': pose.tolist(), 'size': [0.1, 0.1, 0.1]}

    gt = {'objects': [obj('mug', 0.0), obj('bowl', 0.3), obj('unknown', 0.6)]}
    dets = msg.DetectionArray(detections=[det(1, 'mug', 0.0), det(2, 'plate', 0.3),
                                          det(3, 'ball', 0.6), det(4, 'can', 1.5)])
    report = demo_report.summarise(dets, [], gt)
    assert [r['correct'] for r in report['detections']] == [True, False, None, None]
    assert [r['ground_truth'] for r in report['detections']] == ['mug', 'bowl', 'unknown', None]
    assert (report['labels_correct'], report['labels_judged']) == (1, 2)
