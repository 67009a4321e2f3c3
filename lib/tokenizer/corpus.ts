/**
 * A small built-in English corpus, written for this package, that `init`
 * trains its byte-level BPE tokenizer on. It only has to give the merges
 * something typical to learn from (common words, punctuation, digits, chat
 * turns); any text still encodes, byte by byte where no merge applies.
 */
export const BUILTIN_CORPUS = `The river runs past the old mill at the edge of the town. In the morning the water is cold and clear, and the light comes through the trees in long yellow bands. People walk their dogs along the path, and children throw small stones to see how far they can make them skip. Nobody remembers when the mill last turned, but everyone agrees that it should be kept, because it is part of the story of the place.

A good question is worth more than a quick answer. When you are asked something you do not know, say so, and then say how you would find out. If you are asked to explain a hard idea, start with an example, then give the rule, and then show where the rule stops working. Short sentences help. So do plain words.

To make bread you need flour, water, salt and yeast. Mix 500 grams of flour with 350 grams of warm water and let it rest for thirty minutes. Add 10 grams of salt and 7 grams of yeast, then knead the dough for ten minutes until it is smooth. Leave it in a warm room for two hours, shape it, and bake it at 230 degrees for about 35 minutes. The crust should be dark and the loaf should sound hollow when you tap the bottom.

User: Can you help me write a short note to my neighbour about the noise?
Assistant: Of course. Here is a friendly note: "Hi! I hope you are well. I wanted to mention that the music has been quite loud late in the evening. Would you mind turning it down after ten? Thank you so much, and let me know if anything I do bothers you too."

User: What is the capital of France?
Assistant: The capital of France is Paris.

User: How many days are there in a leap year?
Assistant: A leap year has 366 days. February has 29 days instead of 28.

Computers store numbers in binary. A single bit is either 0 or 1, a byte is 8 bits, and a kilobyte is 1024 bytes. Text is stored as a sequence of bytes too: in UTF-8, the letters of the English alphabet take one byte each, while many other characters take two, three or four. A tokenizer turns that text into a list of numbers that a model can read, and turns the numbers back into text when the model writes.

The weather report for Tuesday: cloudy in the morning, with light rain from noon until about four o'clock. Winds from the west at 15 to 20 kilometres per hour. Temperatures between 12 and 17 degrees. On Wednesday the sky should clear, and the weekend looks dry and warm.

She opened the letter slowly. It was short, only three lines, and it was not signed. "Meet me at the station on Friday," it said. "Bring the map. Tell no one." She read it twice, folded it, and put it in the pocket of her coat. Then she went back to the kitchen, where the kettle was just beginning to sing.

Here are some tips for learning a new language. First, listen every day, even if only for ten minutes. Second, learn the most common words before the rare ones; a few hundred words cover most of what people say. Third, speak early and make mistakes, because mistakes are how you learn. Fourth, read things you enjoy. Finally, be patient: it takes time, and that is normal.

Why is the sky blue? Sunlight contains all colours. As it passes through the air, the short blue waves are scattered much more than the long red ones, so blue light reaches our eyes from every part of the sky. At sunset the light travels through more air, most of the blue is scattered away, and the sky turns orange and red.

The meeting is on Monday at 9:30 in room 204. Please bring your notes from last week, and be ready to share one thing that went well and one thing that did not. We will finish by 11:00. If you cannot come, send me a message before Friday so that I can update the plan.

Thank you for your help! I really appreciate it. You're welcome; I'm glad it worked. Let's talk again soon. It's been a long day, hasn't it? We'll see what tomorrow brings. They've already left, and I'd rather not wait.
`;
