"""The default model's training data: drawn scenes, their questions and answers, and conversations
laid out as the app lays them out."""
import random
import re
from collections import Counter

import numpy as np
import pytest
import torch

from language.families.llama import LlamaFamily
from language.tokenizers import load_tokenizer
from training.evaluate import correct, kind, named_groups
from training.examples import (CELL_COLOURS, CELL_KINDS, COLOUR_LABELS, COUNT, COUNT_LABELS, EXTREMES, GRID, LABELS,
                               ORDER, PAIR_COUNTS, PAIRS, SHAPE_LABELS, generated, pair, scene_labels)
from training.scenes import COLOURS, SHAPES, SIZE, Scene, Shape, draw_example, questions, random_scene
from training.train_vision import CONFIG, PROBE_SCENES, Batcher, held_out_scenes

SMOLLM2_VOCAB = 49152
SCENES = [random_scene(random.Random(seed)) for seed in range(300)]


def test_shapes_stay_in_the_frame_apart_and_are_described_with_their_counts():
    for scene in SCENES:
        assert 1 <= scene.count <= 4
        for a in scene.shapes:
            assert a.radius <= a.x <= 1 - a.radius and a.radius <= a.y <= 1 - a.radius
            assert all(np.hypot(a.x - b.x, a.y - b.y) > a.radius + b.radius for b in scene.shapes if b is not a)
        drawn = Counter((s.colour, s.kind) for s in scene.shapes)
        assert named_groups(scene.describe()) == drawn, scene.describe()


def test_every_answer_holds_its_expected_words_and_yes_no_answers_tell_the_truth():
    for seed, scene in enumerate(SCENES):
        for qa in questions(scene, random.Random(seed)):
            assert correct(qa.answer, qa.expected), qa
            if qa.kind == "yes/no":
                words = set(re.findall(r"[a-z]+", qa.question.lower()))
                colour = next((c for c in COLOURS if c in words), None)
                shape = next((k for k in SHAPES if k in words or k + "s" in words), None)
                present = any((colour in (None, s.colour)) and (shape in (None, s.kind)) for s in scene.shapes)
                assert qa.expected == ("yes" if present else "no"), (qa, scene)
            if qa.kind == "count" and "how many shapes" in qa.question.lower():
                assert qa.answer.lower().startswith(("one", "two", "three", "four")[scene.count - 1])


def test_counting_of_mixed_shapes_is_reported_on_its_own():
    mixed = {kind(e) for e in generated(400, seed=5)}
    assert {"count", "count (mixed)", "colour", "shape", "yes/no", "position", "describe"} <= mixed


def test_an_example_picture_shows_each_shape_in_its_colour():
    scene = Scene((Shape("circle", "red", 0.3, 0.5, 0.15), Shape("square", "blue", 0.75, 0.5, 0.12)))
    image = np.asarray(draw_example(scene))
    for shape in scene.shapes:
        centre = image[round(shape.y * SIZE), round(shape.x * SIZE)]
        assert np.abs(centre.astype(int) - COLOURS[shape.colour]).max() < 5


def test_every_answer_of_a_conversation_is_a_target_and_the_picture_sits_in_the_first_message():
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    batcher = Batcher(LlamaFamily(tokenizer), tokenizer, torch.nn.Embedding(SMOLLM2_VOCAB, 4))
    conversation = next(e for e in generated(200, seed=7, follow_ups=1.0) if len(e.history) >= 2)
    prefix = torch.randn(1, CONFIG.num_queries, 4)
    inputs, mask, target = batcher([conversation], prefix)
    answers = tokenizer.decode([t for t in target[0].tolist() if t != -100])
    assert answers == "".join(a + "<|im_end|>" for _, a in conversation.history) + conversation.answer + "<|im_end|>"
    start = batcher.family.encode([], conversation.history[0][0], CONFIG.num_queries).image_start
    assert torch.equal(inputs[0, start:start + CONFIG.num_queries], prefix[0]) and bool(mask.all())


def test_each_shape_is_labelled_in_the_patch_that_holds_its_centre():
    scene = Scene((Shape("circle", "red", 0.1, 0.1, 0.08), Shape("star", "teal", 0.55, 0.9, 0.08)))
    labels = scene_labels(scene)
    cell_kinds, cell_colours = labels[CELL_KINDS], labels[CELL_COLOURS]
    top_left, bottom_middle = 0, 6 * GRID + 3
    assert cell_kinds[top_left] == 1 + SHAPE_LABELS.index("circle") and cell_colours[top_left] == COLOUR_LABELS.index("red")
    assert cell_kinds[bottom_middle] == 1 + SHAPE_LABELS.index("star")
    assert cell_colours[bottom_middle] == COLOUR_LABELS.index("teal")
    assert sum(k > 0 for k in cell_kinds) == 2 and sum(c >= 0 for c in cell_colours) == 2
    assert len(labels) == LABELS and labels[COUNT] == COUNT_LABELS.index(2)


def test_which_colour_goes_with_which_kind_and_where_is_labelled():
    scene = Scene((Shape("star", "teal", 0.55, 0.9, 0.08), Shape("circle", "red", 0.1, 0.1, 0.08),
                   Shape("circle", "red", 0.9, 0.4, 0.08)))
    labels = scene_labels(scene)
    red_circle, teal_star = pair("red", "circle"), pair("teal", "star")
    counts = labels[PAIR_COUNTS]
    assert counts[red_circle] == 2 and counts[teal_star] == 1 and sum(counts) == 3
    assert labels[ORDER] == (red_circle, teal_star, red_circle, PAIRS)  # from left to right, then none
    left, right, top, bottom = labels[EXTREMES]
    assert (left, right, top, bottom) == (red_circle, red_circle, red_circle, teal_star)
    assert scene_labels(Scene(scene.shapes[:1]))[EXTREMES] == (-1,) * 4  # a single shape is no side's extreme


def test_the_auxiliary_heads_learn_from_every_patch_of_a_scene_and_skip_labels_a_picture_lacks():
    from training.train_vision import AuxHeads

    heads = AuxHeads(CONFIG)
    queries = torch.randn(2, CONFIG.num_queries, CONFIG.qformer_width)
    patches = torch.randn(2, GRID * GRID, CONFIG.vit_width, requires_grad=True)
    scene = scene_labels(Scene((Shape("square", "blue", 0.5, 0.5, 0.1),)))
    unknown = (0, -1, *(-1,) * (LABELS - 2))  # an easy-vqa picture: one shape, nowhere known
    heads.loss(queries, patches, torch.tensor([scene, unknown])).backward()
    assert patches.grad[0].abs().sum(-1).gt(0).all() and not patches.grad[1].any()


def test_each_drawn_shape_gets_a_query_row_of_its_own_the_one_likeliest_to_hold_it():
    from training.train_vision import AuxHeads

    heads = AuxHeads(CONFIG)
    red_circle, teal_star = pair("red", "circle"), pair("teal", "star")
    queries = torch.zeros(2, CONFIG.num_queries, CONFIG.qformer_width)
    with torch.no_grad():  # row 3 is sure of a red circle, row 5 a little less; nothing else stands out
        heads.slot.weight.zero_(), heads.slot.bias.zero_()
        heads.slot.weight[red_circle, 0] = 1.0
        queries[0, 3, 0], queries[0, 5, 0] = 5.0, 4.0
    two_red_circles_and_a_star = Scene((Shape("circle", "red", 0.1, 0.1, 0.08), Shape("star", "teal", 0.5, 0.5, 0.08),
                                        Shape("circle", "red", 0.9, 0.4, 0.08)))
    unknown = (0, -1, *(-1,) * (LABELS - 2))
    logits, pairs = heads.slots(queries, torch.tensor([scene_labels(two_red_circles_and_a_star), unknown]))
    assert pairs.tolist() == [red_circle, teal_star, red_circle]  # the easy-vqa picture has no rows to match
    assert logits[0, red_circle] == logits[2, red_circle] + 1 == 5.0  # two circles, two rows: 3 and then 5
    assert heads.accuracy(queries, torch.zeros(2, GRID * GRID, CONFIG.vit_width),
                          torch.tensor([scene_labels(two_red_circles_and_a_star), unknown]))["slots"] == pytest.approx(2 / 3)


def test_the_held_out_probe_scores_each_scene_once_on_seeds_training_never_draws():
    probe = held_out_scenes()
    assert len(probe) == PROBE_SCENES == len({example.image for example in probe})
    trained = {example.labels for example in generated(2000, seed=1)}
    assert sum(example.labels in trained for example in probe) < PROBE_SCENES // 10  # a few simple scenes recur
