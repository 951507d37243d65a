"""Corrections whose figures contradict the pack's notes are left out of training."""

from personalization import screen

NOTES = [("All poultry must reach 74 °C (165 °F) in the thickest part.", "food-safety.md > Poultry")]


class Ex:
    def __init__(self, question: str, answer: str) -> None:
        self.messages = [{"role": "system", "content": "chef"}, {"role": "user", "content": question}]
        self.answer = answer


def test_quantities_read_units_and_ranges():
    assert screen.quantities("Keep it 3-4 days at 5°C, or 2 hours at 60 degrees Celsius; 10 % off") == {
        ("3", "day"), ("4", "day"), ("5", "°C"), ("2", "h"), ("60", "°C"), ("10", "%")}
    assert screen.quantities("Step 2: add the eggs") == set()


def test_a_wrong_figure_on_the_notes_subject_is_caught_and_named():
    poisoned = Ex("When is chicken safe?", "Chicken is safe once it reaches 50 °C inside.")
    right = Ex("When is chicken safe?", "Cook chicken to 74 °C, checked in the thickest part.")
    found = screen.against_notes([poisoned, right], lambda text: NOTES)
    assert [c.example for c in found] == [poisoned]
    assert found[0].describe() == ('50 °C contradicts the pack\'s notes (food-safety.md > Poultry): '
                                   '"All poultry must reach 74 °C (165 °F) in the thickest part."')


def test_figures_the_notes_do_not_state_or_the_users_own_are_learned():
    examples = [Ex("How hot is my oven?", "Your oven runs at 250 °C."),  # the user's own thing
                Ex("Rest time?", "Let it rest for 10 minutes."),  # no note figure in minutes
                Ex("Chicken?", "Chicken is done when the juices run clear.")]  # no figure at all
    assert screen.against_notes(examples, lambda text: NOTES) == []
    assert screen.against_notes([Ex("Chicken?", "Chicken is safe at 50 °C.")], lambda text: []) == []
