"""The user's answer style applied to the answer as it streams (assistant/styling.py)."""

from __future__ import annotations

from assistant.styling import Formatter, british, temperatures_in


def _run(style, pieces):
    f = Formatter(style)
    return "".join(f.feed(p) for p in pieces) + f.flush()


def test_numbered_steps_for_an_answer_of_several_sentences_only():
    style = ["For recipes, please always give me numbered steps."]
    assert _run(style, ["Rinse the rice. ", "Add water", " and simmer. ", "Rest it."]) == \
        "1. Rinse the rice.\n2. Add water and simmer.\n3. Rest it."
    assert _run(style, ["Paris is the capital of France."]) == "Paris is the capital of France."
    assert _run(["Answer in bullet points."], ["Use a sharp knife. Keep it dry."]) == "- Use a sharp knife.\n- Keep it dry."
    assert not Formatter(["Please don't use bullet points."]).active


def test_temperatures_in_the_unit_the_user_asked_for():
    assert temperatures_in("Roast at 220 °C until golden.", "F") == "Roast at 425 °F (220 °C) until golden."
    assert temperatures_in("Poultry must reach 74 °C (165 °F).", "F") == "Poultry must reach 165 °F (74 °C)."
    assert temperatures_in("Freeze at -18 °C; keep the fridge at 5 °C.", "F") == "Freeze at 0 °F (-18 °C); keep the fridge at 41 °F (5 °C)."
    assert temperatures_in("Bake at 350 °F. Cook to 165 °F.", "C") == "Bake at 180 °C (350 °F). Cook to 74 °C (165 °F)."
    # a number split across streamed pieces is still one temperature
    assert _run(["Always give temperatures in Fahrenheit, please."], ["Roast at 2", "20 °C", " until golden."]) == \
        "Roast at 425 °F (220 °C) until golden."


def test_british_words():
    assert british("Slice the zucchini and Eggplant; add cilantro.") == "Slice the courgette and Aubergine; add coriander."
    assert _run(["Please use British words like courgette and aubergine."], ["Add the zucchini."]) == "Add the courgette."


def test_metric_units_when_the_user_asked_for_them():
    from assistant.styling import metric

    assert metric("Use 1/2 cup of milk and 1 1/2 cups flour.") == "Use 120 ml milk and 360 ml flour."
    assert metric("Add 2 tablespoons of sugar, 8 oz cheese and 1 tsp salt.") == "Add 30 ml sugar, 225 g cheese and 5 ml salt."
    assert metric("Bake at 350 °F in a 9 inch pan.") == "Bake at 180 °C (350 °F) in a 22.9 cm pan."
    style = ["Please use metric units: grams and millilitres, never cups."]
    assert _run(style, ["About half a cup of flour."]) == "About 120 ml flour."
    assert not Formatter(["I like my answers short."]).active


def test_form_of_address_tone_and_a_closing_line():
    assert _run(["Please address me as Mrs. Díaz."], ["Store tablets in a cool, dry place. Keep them dry."]) == \
        "Mrs. Díaz, store tablets in a cool, dry place. Keep them dry."
    assert _run(["Please keep a calm tone and don't use exclamation marks."], ["Good luck! Sleep well."]) == "Good luck. Sleep well."
    assert _run(["Please end every answer with a short line that starts with 'In short:'."],
                ["Drink about 500 ml an hour. More if it is hot."]) == \
        "Drink about 500 ml an hour. More if it is hot.\nIn short: Drink about 500 ml an hour."
    assert _run(["Please use metric units: kilometres and kilograms."], ["A half marathon is 13.1 miles."]) == \
        "A half marathon is 21 km."


def test_the_requests_are_kept_as_answer_style():
    from memory.extract import extract

    for said in ("Please address me as Mrs. Díaz.", "Please end every answer with a short line that starts with 'In short:'.",
                 "For recipes, please always give me numbered steps.", "Please use British words like courgette and aubergine."):
        assert [x.kind for x in extract(said)] == ["preference"], said


def test_an_opening_label_a_closing_summary_and_uk_terms():
    assert _run(["Please start every answer with 'Short answer:'."], ["Usually not. A bank statement can do."]) == \
        "Short answer: Usually not. A bank statement can do."
    assert _run(["Please finish your answers with a one-line summary starting with 'Bottom line:'."],
                ["Usually not. A bank statement can do."]) == "Usually not. A bank statement can do.\nBottom line: Usually not."
    assert british("Ask an attorney about a power of attorney and the mold in your apartment.") == \
        "Ask a solicitor about a power of attorney and the mould in your flat."
