#!/usr/bin/env python3
"""letter_count: the Dendro tutorial app, written with the real dendro 0.2.x SDK.

The demo and the tests run it as a job: it reads a text input through the SDK (downloaded from
the central's blob store), counts one letter and uploads a JSON output.
"""

import json
import time

from dendro.sdk import App, BaseModel, Field, InputFile, OutputFile, ProcessorBase


class LetterCountContext(BaseModel):
    input: InputFile = Field(description="Input text file")
    output: OutputFile = Field(description="Output JSON file")
    letter: str = Field(description="Letter to count")
    delay_sec: float = Field(default=0.0, description="Seconds to wait before counting (to test time limits)")


class LetterCountProcessor(ProcessorBase):
    name = "letter_count"
    label = "Letter Count"
    description = "Counts how often a letter appears in a text file and writes the count as JSON."
    tags = ["tutorial"]
    attributes = {"wip": True}

    @staticmethod
    def run(context: LetterCountContext):
        if len(context.letter) != 1:
            raise ValueError(f"letter must be one character, not {context.letter!r}")
        time.sleep(context.delay_sec)
        context.input.download("input.txt")
        with open("input.txt") as handle:
            text = handle.read()
        count = text.count(context.letter)
        print(f"letter_count: {context.letter!r} appears {count} times in {len(text)} characters")
        with open("output.json", "w") as handle:
            json.dump({"letter": context.letter, "count": count}, handle)
        context.output.upload("output.json")


app = App(name="letter_count", description="Example Dendro app for the dendro-prefect demo", app_executable="main.py")
app.add_processor(LetterCountProcessor)

if __name__ == "__main__":
    app.run()
