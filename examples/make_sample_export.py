"""Write the bundled sample: a synthetic Telegram Desktop export ("Machine-readable JSON").

    python examples/make_sample_export.py                 # rewrites examples/telegram_export/result.json
    python examples/make_sample_export.py --out /tmp/x    # writes /tmp/x/result.json

Everyone in it is made up. The export's owner, Alexander Smirnov, is the target; he writes to three
friends in personal chats and to a small hiking group, and the four of them write in styles a model
can learn and the fidelity report can measure (style.py):
  - Alexander mixes Russian and English in the same message, in lower case, one or two messages a turn;
  - Катя Морозова sends many short lower-case Russian messages without punctuation, with emoji;
  - Eleanor Whitfield writes one long, capitalised, punctuated English message a turn;
  - Dmitry Volkov writes capitalised Russian, asks questions and sends links.
Each conversation is a topic of its chat (a film, a hike, a laptop to buy) played from templates: a
session picks a topic, one of its lines of wordings, and slot values such as a time or a film. Alexander
opens 15-25% of each friend's conversations: there, what comes before a friend's turn is his casual
Russian-English, and only the name in the turn's header says who answers: a twin must take a person's
style from their name, not from the turn it answers.

Around them sits what a real export holds and the converter must handle: media (photos, stickers,
voice and video messages, files, a location, a contact, a poll), service messages, forwarded and
via-bot messages, replies, edits, links and mentions as text entities, a renamed and a deleted
account, two people of the same name, control characters written as \\xHH the way Telegram Desktop
writes them, chats that are not conversations (a bot, a channel, Saved Messages, login codes), a group
exported with only the owner's messages, a left group, and a public supergroup.

The output depends on SEED only: the same file on every run and every machine.
"""

import argparse
import json
import random
import re
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core import atomic  # noqa: E402

SEED = 25  # its held-out splits hold sessions of every persona: with --split time at the demo's 5%, 13 of
# Катя's, 9 of Eleanor's, 9 of Dmitry's; at train.py's default (hash, 2%), 3, 2 and 3
SAMPLE_EXPORT = Path(__file__).resolve().parent / "telegram_export"
FIRST_DAY = datetime(2023, 1, 9, tzinfo=timezone.utc)
LAST_DAY = datetime(2024, 11, 15, tzinfo=timezone.utc)
DAY = 24 * 3600
FILE_NOT_INCLUDED = "(File not included. Change data exporting settings to download.)"
URL = re.compile(r"https?://\S+")
# Telegram Desktop writes control characters as \xHH; json writes \u00hh. An escaped backslash
# before the "u" is a backslash in the text, not an escape.
CONTROL_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u00([01][0-9a-f])")


@dataclass(frozen=True)
class Person:
    name: str | None  # None: a deleted account
    id: int


ALEXANDER = Person("Alexander Smirnov", 900000001)
ELEANOR = Person("Eleanor Whitfield", 900000002)
KATYA = Person("Катя Морозова", 900000003)
DMITRY = Person("Dmitry Volkov", 900000004)
MISHA = Person("Misha", 900000005)
OTHER_MISHA = Person("Misha", 900000006)  # the converter calls him "Misha (2)"
DELETED = Person(None, 900000007)
KATYA_OLD_NAME, KATYA_RENAMED = "Katya", datetime(2023, 3, 1, tzinfo=timezone.utc).timestamp()
PEOPLE = {"A": ALEXANDER, "E": ELEANOR, "K": KATYA, "D": DMITRY, "M": MISHA, "M2": OTHER_MISHA, "X": DELETED}


# --- What they say -------------------------------------------------------------------------------
# A topic is a list of beats: (who, wordings) or (who, wordings, chance of the beat happening at all).
# A wording is one turn: " | " separates its messages, {slot}s are filled once per session, and
# <photo> and <sticker EMOJI> stand for a message holding that medium. Wordings line up across the
# beats: a session plays the i-th wording of every beat (going round shorter lists), so that each
# turn answers the one before it.

SOMETIMES = 0.5
BRANCHES = 6  # a multiple of every length of wordings (2 and 3): each wording is played as often

KATYA_SLOTS = {
    "film": ["дюну", "новый мультик", "фильм про космос", "ту комедию с котом", "новый триллер"],
    "show": ["тот сериал про врачей", "третий сезон", "новый детектив", "сериал про драконов"],
    "time": ["в семь", "в восемь", "в полвосьмого", "к девяти", "в шесть"],
    "day": ["в субботу", "в воскресенье", "в пятницу", "завтра"],
    "friend": ["Аня", "Оля", "Света", "Маша", "Лена"],
    "friend2": ["Вика", "Наташа", "Юля", "Даша"],
    "food": ["лазанью", "сырники", "пельмени", "плов", "тирамису"],
}

KATYA_TOPICS = [
    [
        (
            "K",
            [
                "привет | что делаешь вечером | пойдём в кино 🍿",
                "слушай | там {film} вышел | пойдём {day}",
                "ты свободен {day} | хочу на {film} 🎬 | пойдём",
            ],
        ),
        ("A", ["привет)) | вроде free after work", "давай, i'm in", "ооо yes, давно хотел"]),
        ("K", ["ура | сеанс {time} | я возьму билеты 🎟", "супер | тогда {time} у кинотеатра"]),
        ("A", ["ок, see you {time}", "успею, no problem", "отлично | я возьму popcorn))"]),
        ("K", ["жду 🥰", "договорились | не опаздывай 😅"], SOMETIMES),
    ],
    [
        ("K", ["ты где | я уже в кофейне ☕️", "я тут | заняла столик у окна", "я на месте | тут очередь"]),
        ("A", ["бегу, 5 min", "sorry, метро встало | буду через 10 минут", "почти дошёл, wait for me"]),
        ("K", ["ладно | тебе взять что-нибудь", "ок | заказать тебе латте"]),
        ("A", ["да, flat white пожалуйста", "да, латте, thanks))", "nothing, я уже с кофе"]),
        ("K", ["ок 👌", "взяла | жду 😊"], SOMETIMES),
    ],
    [
        (
            "K",
            [
                "<photo> | смотри на него | он опять спит на ноутбуке 😹",
                "барсик украл мою шапку | и спит на ней",
                "<photo> | мой пушистый начальник 🐱",
            ],
        ),
        ("A", ["хаха, classic)) | он у тебя главный boss", "omg какой толстый", "lol, он выглядит very important"]),
        ("K", ["да | он всегда такой", "он не толстый | он пушистый 😤", "ага | он тут главный"]),
        ("A", ["respect барсику", "ok ok, пушистый)) | передай ему привет", "haha | передай ему hello"]),
        ("K", ["<sticker 😹>", "передала | он мурчит"], SOMETIMES),
    ],
    [
        ("K", ["на улице ужас | дождь как из ведра 🌧", "снег пошёл | прям настоящий ❄️", "жара | я таю | хочу на море"]),
        ("A", ["да, видел)) | same here", "серьёзно? здесь sunny пока", "я сижу с кондиционером, so fine"]),
        ("K", ["хочу лето | и море 🌊", "сижу дома | пью чай с малиной", "не пойду никуда сегодня"]),
        ("A", ["скоро summer, потерпи", "good plan, я тоже скоро домой", "правильно, stay home"]),
    ],
    [
        (
            "K",
            [
                "я так устала | этот отчёт меня добьёт 😩",
                "начальник опять | всё переделывать",
                "день ужасный | хочу домой",
            ],
        ),
        ("A", ["держись)) | almost friday", "ugh, сочувствую | может прогуляемся вечером", "oh no, что случилось?"]),
        ("K", ["спасибо | до пятницы ещё дожить надо", "давай | только недолго", "всё сломалось | и все бегают"]),
        ("A", ["вечером погуляем, fresh air поможет", "ok, зайду за тобой {time}", "бывает | tomorrow будет лучше"]),
        ("K", ["ок 💛", "ок 💛", "спасибо что ты есть"], SOMETIMES),
    ],
    [
        ("K", ["поехали {day} за город | на дачу к {friend}", "{friend} зовёт на шашлыки | поедем"]),
        ("A", ["звучит good, а кто ещё будет?", "я за)) | what time выезжаем", "только если погода ok"]),
        (
            "K",
            [
                "ещё {friend2} с мужем | выезжаем утром 🚗",
                "все наши | электричка в десять",
                "обещают солнце | я смотрела",
            ],
        ),
        ("A", ["ok, возьму мангал и угли", "ок, я куплю мясо | you take овощи", "отлично, count me in"]),
        ("K", ["ты лучший 🥰 | я сделаю салат", "ура | будет весело"], SOMETIMES),
    ],
    [
        ("K", ["что подарить {friend} | у неё др в субботу 🎂", "помоги с подарком для {friend} | идей ноль"]),
        ("A", ["может сертификат в spa?", "книгу? она вроде любит detective stories", "hmm, а что она любит?"]),
        (
            "K",
            [
                "хм | она в прошлом году уже ходила в спа",
                "книгу это скучно | но можно 🤔",
                "она любит музыку | и котов",
            ],
        ),
        ("A", ["тогда board game, она ж любит игры", "ну или билеты на концерт, win-win", "тогда concert tickets"]),
        ("K", ["о | точно | настолка 🎲 | спасибо", "гений | так и сделаю ✨", "о | концерт | точно 🎉"]),
    ],
    [
        ("K", ["ты досмотрел {show} | я не могу остановиться", "я вчера до трёх смотрела {show} 🙈"]),
        (
            "A",
            ["ещё нет, на пятой серии)) | no spoilers please", "yes, финал просто wow", "я только начал, no spoilers"],
        ),
        ("K", ["молчу молчу 🤐", "аааа | я в шоке до сих пор", "ладно | но там такое"]),
        ("A", ["ok, досмотрю сегодня", "согласен, best season", "всё, смотрю tonight"]),
    ],
    [
        (
            "K",
            [
                "я испекла пирог | с яблоками 🍎 | приходи",
                "научилась делать {food} | зайдёшь на ужин",
                "сделала {food} | много | спасай",
            ],
        ),
        ("A", ["уже иду)) | save me a piece", "wow, буду в восемь", "yes please, через час буду"]),
        ("K", ["ок | только не опаздывай | а то съем всё сама 😋", "жду | купи хлеб по дороге"]),
        ("A", ["deal))", "ok, куплю", "бегу already"], SOMETIMES),
    ],
    [
        (
            "K",
            [
                "доброе утро ☀️ | проспала всё на свете | опоздаю на работу",
                "доброе | ты встал уже",
                "утро | не хочу вставать | совсем",
            ],
        ),
        ("A", ["утро)) | встал, already at work", "доброе, ещё в кровати haha", "morning, я тоже не хочу"]),
        ("K", ["везёт | а я только кофе пью", "соня 😜", "ладно | пошла собираться"]),
        ("A", ["have a nice day))", "ладно, getting up, встаю", "удачи today"]),
    ],
    [
        ("A", ["привет)) | что делаешь tonight?", "hey, ты дома?", "слушай, есть plans на вечер?"]),
        ("K", ["ничего | сижу дома | а что", "да | а что случилось", "пока нет | а что"]),
        (
            "A",
            ["пойдём гулять, weather отличная", "можно зайду? нужна твоя help с презентацией", "го в кафе, i'm buying"],
        ),
        ("K", ["давай | через час 🙌", "заходи | чайник ставлю", "ура | бегу"]),
    ],
    [
        (
            "A",
            [
                "купил билеты на концерт)) | пойдёшь {day}?",
                "hey, где тут good кофе рядом с работой?",
                "катя, help | что подарить маме на др?",
            ],
        ),
        (
            "K",
            [
                "ааа | конечно | а кто играет 🎶",
                "знаю | на углу у парка | там лучший раф ☕️",
                "цветы | и торт | мамы любят торт 🎂",
            ],
        ),
        ("A", ["сюрприз)) | you'll like it", "thanks, попробую tomorrow", "good idea, торт it is"]),
        ("K", ["ну скажи | ну пожалуйста 🙏", "только не бери с сиропом | это ужас", "и открытку | обязательно 💌"]),
    ],
    [
        ("A", ["ты дома? | я рядом, зайду на 5 min", "как там барсик? | вылечили?", "такой день | hate mondays"]),
        ("K", ["дома | заходи | чайник ставлю", "да | уже носится по квартире 😹", "понимаю | у меня тоже всё плохо"]),
        ("A", ["ok, буду через 10", "good news))", "пошли вечером гулять, fresh air"]),
        ("K", ["жду 🥰", "ага | он передаёт привет", "давай | {time}"]),
    ],
]

ELEANOR_SLOTS = {
    "city": ["Edinburgh", "York", "Bath", "Oxford", "Brighton"],
    "month": ["March", "May", "June", "September", "October"],
    "book": ["The Remains of the Day", "Middlemarch", "A Gentleman in Moscow", "Stoner", "Klara and the Sun"],
    "film": ["Paddington 2", "The Grand Budapest Hotel", "Past Lives", "Perfect Days", "Aftersun"],
    "weekday": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"],
}

ELEANOR_TOPICS = [
    [
        (
            "E",
            [
                "Good morning, Alexander. I hope the week has been kind to you so far. Are you still planning to "
                "come to {city} in {month}? My sister has offered us her flat near the river, and it would be "
                "lovely to show you around properly this time.",
                "I have been looking at train tickets to {city} for {month}, and they are surprisingly reasonable "
                "if we book this week. Would you still like to come with us? It would be such a pleasure to have "
                "you along.",
            ],
        ),
        (
            "A",
            [
                "morning)) | да, still planning",
                "yes! билеты почти купил | just need to confirm the dates",
                "конечно, count me in",
            ],
        ),
        (
            "E",
            [
                "Wonderful news. Let me know the dates as soon as you have them, and I shall book a table at the "
                "little Italian place we talked about. Do bring a proper coat, though: the wind in {month} can be "
                "merciless.",
                "Splendid. I shall tell my sister tonight, and she will be delighted. Please remember that the "
                "trains are often late on Sundays, so plan a little extra time for the journey home.",
            ],
        ),
        ("A", ["haha понял, coat обязательно", "ок, noted | возьму extra time", "ок, will send the dates tonight"]),
        ("E", ["Perfect. Speak soon, and take care of yourself until then."], SOMETIMES),
    ],
    [
        (
            "E",
            [
                "I have just finished {book}, and I cannot stop thinking about it. The last chapter is quietly "
                "devastating. Have you read anything good lately?",
                "My book club has chosen {book} for next month, and I seem to be the only one who has read it "
                "already. Should I confess, or quietly read it again?",
            ],
        ),
        (
            "A",
            [
                "ещё нет, но {book} в списке)) | reading a sci-fi thing now",
                "haha, confess обязательно",
                "not yet | но ты уже третья, кто советует",
            ],
        ),
        (
            "E",
            [
                "Then you must move it to the top of the list. I will lend you my copy when you visit; it is full "
                "of pencil notes, which I hope you will forgive.",
                "You are quite right, honesty is the best policy. I shall bring cake to soften the blow, which "
                "usually works with that particular group.",
            ],
        ),
        ("A", ["deal, спасибо", "cake решает всё", "ok, с пометками even better))"]),
    ],
    [
        (
            "E",
            [
                "Alexander, I am sorry to bother you on a Sunday, but the client has moved the deadline for the "
                "report to {weekday}. Would you be able to review the second section before then? I know it is "
                "a lot to ask.",
                "Quick question about the report: did you manage to check the figures in the appendix? The client "
                "has asked for the final version by {weekday}, and I would like to send it a day early.",
            ],
        ),
        ("A", ["no problem, сделаю", "да, проверил | there were two typos", "ох, ok | постараюсь к вечеру"]),
        (
            "E",
            [
                "Thank you, you are an absolute star. I have left my comments in the margins, so it should not "
                "take too long. Please shout if anything is unclear.",
                "Marvellous, thank you. I shall correct them this afternoon and send you the final version before "
                "it goes out.",
            ],
        ),
        ("A", ["ok, посмотрю tomorrow morning", "sure, жду", "perfect))"], SOMETIMES),
    ],
    [
        (
            "E",
            [
                "The garden has finally woken up: the tulips are out, and the neighbour's cat has claimed the "
                "warmest corner of the lawn. How is the weather on your side?",
                "It has rained for nine days in a row here, and I am beginning to forget what the sun looks like. "
                "Please tell me it is better where you are.",
            ],
        ),
        ("A", ["у нас ещё snow местами)) | but getting warmer", "тоже дождь, sorry", "тепло уже, sunny весь день"]),
        (
            "E",
            [
                "Snow! I had quite forgotten that it could still snow in spring. Do wrap up warm, and send me a "
                "photograph if it looks pretty.",
                "Then we shall suffer together. I have put the kettle on and intend to spend the evening with a "
                "blanket and a good book.",
                "Lucky you. I shall bake something this afternoon to cheer myself up, and perhaps plant the beans "
                "if the ground is not too wet.",
            ],
        ),
        ("A", ["ok)) будет photo", "sounds cosy, enjoy", "bake за меня тоже))"]),
    ],
    [
        (
            "E",
            [
                "A question for my favourite teacher: what is the difference between 'poka' and 'do svidaniya'? "
                "My textbook is rather vague about it, and I do not want to sound rude to my colleagues.",
                "I have been practising my Russian on the train. Is it true that 'nu' can mean almost anything, "
                "depending on how you say it?",
            ],
        ),
        (
            "A",
            [
                "«пока» is casual, для друзей | «до свидания» more formal",
                "haha, yes | «ну» это целая philosophy",
                "good question)) | пока for friends only",
            ],
        ),
        (
            "E",
            [
                "That makes perfect sense, thank you. I shall practise on the postman tomorrow, who will be very "
                "confused indeed.",
                "How wonderful. I shall add it to my notebook, together with the twelve other words I still "
                "cannot pronounce.",
            ],
        ),
        ("A", ["haha, удачи))", "у тебя great получается"], SOMETIMES),
    ],
    [
        (
            "E",
            [
                "We watched {film} last night, and I must say I was pleasantly surprised. The photography alone "
                "was worth the ticket. Did you ever see it?",
                "Have you seen {film}? Everyone at work keeps talking about it, and I feel rather left out of the "
                "conversation.",
            ],
        ),
        ("A", ["yes, давно | музыка там super", "not yet, но теперь посмотрю", "да, one of my favourites"]),
        (
            "E",
            [
                "I knew you would like it. The ending made me cry, which I shall deny if anyone asks.",
                "Then we must watch it together when you visit. I will make popcorn, although I suspect it will "
                "not be as good as the cinema's.",
            ],
        ),
        ("A", ["haha, твой secret в безопасности", "deal))"], SOMETIMES),
    ],
    [
        (
            "E",
            [
                "I heard that you have been unwell. I do hope it is nothing serious. Please rest, drink plenty of "
                "tea, and do not even think about answering work emails.",
                "How are you feeling today? Katya mentioned that you had a fever at the weekend, and I have been "
                "worrying a little.",
            ],
        ),
        ("A", ["спасибо)) | уже лучше", "much better today, спасибо", "just a cold, ничего страшного"]),
        (
            "E",
            [
                "I am glad to hear it. Take care of yourself, and let me know if you need anything at all.",
                "That is a relief. Still, do not rush back to work; the world will not end if the report waits "
                "another day.",
            ],
        ),
        ("A", ["thanks, Eleanor))", "ok, обещаю"], SOMETIMES),
    ],
    [
        (
            "E",
            [
                "I tried to make the borscht from the recipe you sent me, and I think it went rather well, "
                "although it came out more orange than red. Is that a disaster, or merely a regional variation?",
                "Could you send me your mother's recipe for syrniki again? I have lost the note, and I promised my "
                "nephew a proper Russian breakfast on Saturday.",
            ],
        ),
        (
            "A",
            [
                "haha, значит мало свёклы | but still borscht))",
                "сейчас спрошу у мамы, one sec",
                "haha, это нормально | just add more свёклы",
            ],
        ),
        (
            "E",
            [
                "Then I shall add more beetroot next time and report back. My husband had three bowls, so I "
                "suspect the colour did not bother him.",
                "Thank you so much. I shall follow it to the letter and send you a photograph of the result, "
                "however it turns out.",
            ],
        ),
        ("A", ["haha, твой муж прав))", "жду photos"], SOMETIMES),
    ],
    [
        (
            "E",
            [
                "Could we move our call to {weekday} at four? Something has come up at the office, and I would "
                "rather not rush our conversation.",
                "Are you free for a short call on {weekday}? There are a few things about the project I would like "
                "to discuss before the meeting.",
            ],
        ),
        ("A", ["sure, в четыре по лондону?", "ок, after lunch удобно", "да, {weekday} ok"]),
        (
            "E",
            [
                "Yes, four o'clock London time. Thank you for being so flexible; I shall send the invitation now.",
                "Lovely. I shall send the invitation shortly, with a short agenda so that we do not wander off "
                "topic as usual.",
            ],
        ),
        ("A", ["ок))", "great"], SOMETIMES),
    ],
    [
        (
            "E",
            [
                "We are back from {city} at last. The trip was lovely but exhausting, and I think I walked more "
                "in four days than in the whole of last year. I will send you photographs once I have sorted "
                "through them.",
                "Greetings from {city}! The weather is glorious, the tea is strong, and I have already bought far "
                "too many books to fit in my suitcase.",
            ],
        ),
        ("A", ["welcome back)) | жду фотки", "haha, books это святое", "wow, завидую | рад, что понравилось"]),
        (
            "E",
            [
                "I shall, I promise. The cathedral was even more beautiful than I remembered, and we found a "
                "tiny bookshop that you would adore.",
                "Thank you. I shall bring you something small, although I am not yet sure how I shall get it all home.",
                "It really was special. The cathedral was even more beautiful than I remembered, and we found a "
                "tiny bookshop that you would adore.",
            ],
        ),
        (
            "A",
            ["хочу туда)) | sounds amazing", "не надо ничего, just come back safe", "хочу туда)) | sounds amazing"],
            SOMETIMES,
        ),
    ],
    [
        (
            "A",
            [
                "hi Eleanor)) | как дела в {city}?",
                "hey, quick question про {month}",
                "good morning)) | я прочитал {book}, finally",
            ],
        ),
        (
            "E",
            [
                "Hello, Alexander! Everything is splendid here, thank you, although it has not stopped raining "
                "since Tuesday. How are things with you?",
                "Of course, ask away. I am at my desk with a large pot of tea, so you have my full attention.",
                "At last! I have been dying to hear what you think of it. Did the ending move you, or are you made "
                "of sterner stuff than I am?",
            ],
        ),
        (
            "A",
            [
                "всё ok, busy но fine))",
                "можно приехать на неделю later? хочу больше времени",
                "почти cried | но никому не скажу))",
            ],
        ),
        (
            "E",
            [
                "Busy but fine sounds like a good week to me. Do not work too hard, and write when you have a "
                "quiet moment.",
                "A whole week would be wonderful. Let me check with my sister, but I am almost certain that the "
                "flat is free in {month}.",
                "Your secret is safe with me. I am delighted that you liked it, and I shall find you another one "
                "for the winter.",
            ],
        ),
    ],
    [
        (
            "A",
            [
                "hi)) | можешь посоветовать book на английском? | something not too long",
                "Eleanor, help)) | как правильно: on the weekend или at the weekend?",
                "привет)) | в {city} в {month} cold? | собираю чемодан",
            ],
        ),
        (
            "E",
            [
                "Of course. Try {book}: it is beautifully written, not too long, and kind to a reader in a second "
                "language. I shall lend you my copy if you cannot find one.",
                "Both are correct, so you cannot go wrong. We say 'at the weekend' here, while Americans say 'on the "
                "weekend', which I confess still sounds rather odd to my ear.",
                "It can be quite chilly in {month}, especially in the evenings, so do pack a warm jumper and an "
                "umbrella. The sun does come out, but never for long.",
            ],
        ),
        ("A", ["thanks)) | попробую", "понял, at the weekend then", "ok, jumper обязательно"]),
        (
            "E",
            [
                "Do tell me what you think of it when you have finished. I am always curious to hear what others "
                "make of the ending.",
                "You are most welcome. Your English is already far better than my Russian, so I really ought to be "
                "the one asking the questions.",
                "And comfortable shoes, please. The streets are steep and cobbled, and I intend to walk you "
                "everywhere.",
            ],
        ),
    ],
    [
        (
            "A",
            [
                "у меня новости)) | got the job!",
                "hey | наконец-то сдал IELTS, 7.5))",
                "смотри, испёк scones по твоему рецепту | <photo>",
            ],
        ),
        (
            "E",
            [
                "Congratulations, Alexander! That is wonderful news, and richly deserved after all the work you "
                "have put in. When do you start?",
                "Seven and a half! That is a splendid result, and I am very proud of you. You must let me take you "
                "out for dinner to celebrate.",
                "They look absolutely marvellous, far better than mine ever do. Did you remember to warm the milk, "
                "or did you live dangerously?",
            ],
        ),
        ("A", ["в понедельник)) | немного nervous", "deal, но dinner за мной", "haha, warmed, как ты учила"]),
        (
            "E",
            [
                "A little nervousness is a good sign: it means that you care. I am sure you will be brilliant, and "
                "I shall want to hear everything on Monday evening.",
                "Nonsense, this one is on me. I shall book somewhere with a proper pudding menu.",
                "Then you are a better student than most. Next time I shall teach you a proper Victoria sponge.",
            ],
        ),
    ],
    [
        (
            "A",
            [
                "ты свободна завтра? | нужно обсудить the budget",
                "quick one: можно перенести call на {weekday}?",
                "slides готовы | отправил на почту, check please",
            ],
        ),
        (
            "E",
            [
                "I am, yes. Shall we say ten o'clock? I have a meeting at eleven, but an hour should be more than "
                "enough for the budget.",
                "{weekday} suits me perfectly, thank you for asking. Shall we keep the same time, or would the "
                "afternoon be easier for you?",
                "Thank you, they arrived safely. I shall read them this evening and send you my comments first "
                "thing tomorrow morning.",
            ],
        ),
        ("A", ["10 ok))", "same time, perfect", "спасибо, no rush"]),
        (
            "E",
            [
                "Lovely. I shall send you the latest figures tonight, so that we can go through them together.",
                "Wonderful. I shall move the invitation and add the notes from our last call.",
                "I have had a first look, and they are excellent. There are only a couple of small points on the "
                "third slide.",
            ],
        ),
    ],
    [
        ("A", ["<photo> | first snow у нас))", "<photo> | смотри, какой закат сегодня", "hey, угадай где я))"]),
        (
            "E",
            [
                "How beautiful! It looks like a Christmas card. I do hope you are wrapped up warm, and not out "
                "there in that thin jacket of yours.",
                "What a glorious sky. It makes me want to pack a bag and travel somewhere far away at once.",
                "I cannot possibly guess, so you will have to tell me. Somewhere warm, I hope, and with a good view.",
            ],
        ),
        ("A", ["haha, в куртке, не волнуйся", "приезжай, покажу))", "в {city}! | surprise))"]),
        (
            "E",
            [
                "I am relieved to hear it. Send me another photograph when the park is properly white.",
                "I should like nothing better. Let me look at my diary this evening.",
                "How wonderful! You must visit the cathedral and the little bookshop by the river, and then tell me "
                "all about them.",
            ],
        ),
    ],
]

DMITRY_SLOTS = {
    "tool": ["Postgres 16", "Kubernetes", "новый Python", "Rust", "Docker Compose"],
    "team": ["Спартак", "Зенит", "ЦСКА", "Динамо"],
    "time": ["в семь", "в восемь", "в девять", "в полдесятого"],
    "day": ["субботу", "воскресенье", "пятницу"],
    "game": ["Каркассон", "Колонизаторов", "Манчкин", "Кодовые имена"],
    "site": ["example.com/articles", "news.example.org/tech", "blog.example.net/posts"],
}

DMITRY_TOPICS = [
    [
        (
            "D",
            [
                "Привет! Видел новую статью про {tool}? | https://{site}/{n}",
                "Слушай, ты же работал с {tool}? Стоит переходить? | Вот сравнение: https://{site}/{n}",
                "Что думаешь про {tool}? | https://{site}/{n}",
            ],
        ),
        ("A", ["привет)) | yes, читал утром", "работал, it's fine | но миграция боль", "читал, looks promising"]),
        (
            "D",
            [
                "И как тебе? Я не понял, зачем они поменяли конфиг?",
                "А что именно болит? У нас как раз план на следующий квартал.",
                "Серьёзно? А на проде кто-то уже пробовал?",
            ],
        ),
        (
            "A",
            [
                "по-моему for backwards compat, но неудачно",
                "configs и тесты, всё переписывать",
                "да, у друзей уже в проде, no problems",
            ],
        ),
        ("D", ["Ясно. Может, созвонимся завтра на полчаса?", "Понял. Можешь скинуть пример конфига?"]),
        ("A", ["давай, after lunch", "ok, скину вечером"], SOMETIMES),
    ],
    [
        (
            "D",
            [
                "Ты смотришь сегодня матч? {team} играют {time}.",
                "Идём в бар на матч? Трансляция {time}, вот адрес: https://maps.example.com/?q=bar-{n}",
            ],
        ),
        ("A", ["of course)) | ставлю на {team}", "я за, who else is coming?", "не могу сегодня, working late"]),
        (
            "D",
            [
                "А счёт угадаешь? Я думаю, 2:1.",
                "Саша и Игорь. Занять тебе место?",
                "Серьёзно? А кто тогда будет со мной переживать?",
            ],
        ),
        ("A", ["2:0, мне кажется", "да, займи please", "haha, я напишу по ходу"]),
    ],
    [
        (
            "D",
            [
                "У тебя есть перфоратор? Хочу полку повесить на выходных.",
                "Поможешь в {day} с переездом? Нужно перенести диван и пару коробок.",
            ],
        ),
        ("A", ["есть, забирай anytime", "да, помогу)) | what time?", "конечно, no problem"]),
        ("D", ["Отлично! Можно заеду {time}? Не поздно?", "Давай к десяти? Я потом пиццу закажу, идёт?"]),
        ("A", ["ok, {time} норм", "deal, пицца решает"]),
    ],
    [
        (
            "D",
            [
                "Поедешь на рыбалку в {day}? | Прогноз: https://weather.example.com/forecast/{n}",
                "Как насчёт дачи на выходных? Баня, шашлык, всё как ты любишь?",
            ],
        ),
        ("A", ["поеду)) | what should i bring?", "звучит amazing, я в деле", "hmm, а кто ещё будет?"]),
        (
            "D",
            [
                "Удочки у меня есть. Возьмёшь термос и бутерброды?",
                "Мясо я куплю. Захватишь угли?",
                "Лена и Саша. Может, Катю тоже позовёшь?",
            ],
        ),
        ("A", ["ok, возьму", "sure, без проблем", "спрошу её tonight"]),
    ],
    [
        (
            "D",
            [
                "Помоги выбрать ноутбук. Вот этот нормальный? | https://shop.example.com/laptops/{n}",
                "Какой ноутбук взять для работы? Смотрю вот этот: https://shop.example.com/item/{n} Что скажешь?",
            ],
        ),
        ("A", ["хм, 8 gb мало, бери 16", "норм, но battery слабая", "looks ok, а какой бюджет?"]),
        (
            "D",
            [
                "А этот? https://shop.example.com/laptops/{n2} Дороже, но памяти 16. Стоит переплачивать?",
                "А что тогда посоветуешь до ста тысяч?",
                "До ста тысяч. Это реально?",
            ],
        ),
        ("A", ["этот better, бери", "посмотри thinkpad, они живучие", "реально, если no gaming"]),
        ("D", ["Спасибо! Закажу сегодня.", "Понял. А ты свой где брал?"], SOMETIMES),
    ],
    [
        (
            "D",
            [
                "Видел это? Ржу весь вечер: https://video.example.com/watch?v={video}",
                "Посмотри, это же про нас: https://video.example.com/watch?v={video}",
            ],
        ),
        ("A", ["hahaha, это шедевр", "lol, точно про нас))", "посмотрю later, на работе сейчас"]),
        (
            "D",
            [
                "Правда же? Скинуть тебе вторую часть?",
                "Помнишь, как мы так же в горах заблудились?",
                "Ну как, посмотрел?",
            ],
        ),
        ("A", ["давай", "ещё бы, never again))", "да, ору))"]),
    ],
    [
        (
            "D",
            [
                "Ты не знаешь хороший сервис? Машина опять стучит.",
                "Подскажешь, где ты менял резину? Там нормальные цены?",
            ],
        ),
        ("A", ["стучит где? front?", "там норм, not expensive", "да, на промышленной | скину контакт"]),
        ("D", ["Вроде спереди. Это опасно?", "А по времени долго?", "Скинешь адрес? Записываться заранее надо?"]),
        ("A", ["не думаю, но проверь asap", "час примерно, maybe less", "лучше заранее, они busy"]),
    ],
    [
        (
            "D",
            [
                "В {day} собираемся играть в {game}, придёшь?",
                "Может, настолки в {day}? Лена купила {game}. | Правила тут: https://games.example.com/rules/{n}",
            ],
        ),
        ("A", ["я за)) | what time?", "ок, прочитаю rules", "maybe, а кто будет?"]),
        (
            "D",
            [
                "Давай {time}. Сможешь захватить чипсы?",
                "Отлично! Ты будешь за синих или за красных?",
                "Все наши. Придёшь?",
            ],
        ),
        ("A", ["ок", "за синих, obviously", "приду)) | for sure"]),
    ],
    [
        (
            "D",
            [
                "Привет! Не забыл, что в {day} у меня день рождения? Собираемся {time} у нас.",
                "Ты придёшь в {day}? Лена спрашивает, ты один или с Катей?",
            ],
        ),
        ("A", ["не забыл)) | буду", "один, probably | катя busy", "конечно приду, what to bring?"]),
        (
            "D",
            [
                "Отлично. Поможешь тогда с мангалом пораньше?",
                "Понял. Без подарков, хорошо?",
                "Ничего не надо. Может, только торт?",
            ],
        ),
        ("A", ["ok, приеду at six", "ок))", "торт on me"]),
    ],
    [
        (
            "D",
            [
                "Глянешь мой PR? Там немного: https://git.example.com/dmitry/tools/pull/{n}",
                "Можешь посмотреть ошибку? Лог тут: https://paste.example.com/{video}",
            ],
        ),
        ("A", ["гляну after lunch", "ок, смотрю | похоже на race condition", "сейчас busy, вечером ok?"]),
        ("D", ["Спасибо! А тесты тоже посмотришь?", "Думаешь? А как это поймать?", "Конечно. Не горит."]),
        ("A", ["да, all green вроде", "добавь lock, должно помочь", "ok, напишу вечером"]),
    ],
    [
        ("A", ["привет)) | есть minute?", "дим, у тебя есть drill? | нужно на час", "hey, ты в {day} free?"]),
        ("D", ["Привет! Конечно, что случилось?", "Есть. Когда тебе удобно забрать?", "Вроде да. А что ты хотел?"]),
        ("A", ["нужен совет по машине, она weird звуки издаёт", "сегодня вечером ok?", "хочу на рыбалку, join?"]),
        (
            "D",
            [
                "Какие звуки? Стучит или скрипит?",
                "Давай {time}. Ты на машине или пешком?",
                "С удовольствием! Во сколько выезжаем?",
            ],
        ),
        ("A", ["скрипит, when turning", "на машине, буду on time", "в шесть утра, early bird"]),
    ],
    [
        (
            "A",
            [
                "дим, посоветуй бар для др | чтобы не too loud",
                "есть idea для подарка лене?",
                "ты смотрел вчерашний матч? | what a game",
            ],
        ),
        (
            "D",
            [
                "Есть хороший на Пятницкой, там тихо. Вот: https://maps.example.com/?q=bar-{n} Сколько вас будет?",
                "Она давно хотела кофемашину. Посмотри эту: https://shop.example.com/item/{n} Что думаешь?",
                "Конечно! Ты видел второй гол? Это же невероятно?",
            ],
        ),
        ("A", ["человек десять)) | thanks", "дороговато, но ok", "yes, лучший гол сезона"]),
        (
            "D",
            [
                "Тогда бронируй заранее. Хочешь, я им позвоню?",
                "Можем скинуться вдвоём. Напишешь остальным?",
                "Согласен. Идём в {day} на следующий?",
            ],
        ),
    ],
    [
        ("A", ["привет)) | нужна help с ноутом | он не включается", "дим, можешь помочь с переездом в {day}?"]),
        ("D", ["Привет! А индикатор горит? Может, батарея села?", "Конечно! Во сколько? Машина нужна?"]),
        ("A", ["ничего не горит, totally dead", "в десять, машина есть"]),
        ("D", ["Принеси его вечером, посмотрю. Зарядку не забудь, хорошо?", "Отлично, буду. Пиццу потом закажем?"]),
    ],
]

GROUP_SLOTS = {
    "route": ["водопад", "Чёртово ущелье", "озеро Кругленькое", "перевал", "Медвежью гору"],
    "km": ["12", "14", "16", "18", "21"],
    "day": ["субботу", "воскресенье"],
}

GROUP_TOPICS = [
    [
        (
            "M",
            [
                "Народ, в {day} идём на {route}! Маршрут {km} км, старт в 8:00 от станции. | Кто с нами?",
                "Всем привет! Планирую поход на {route} в {day}, {km} км. Записывайтесь!",
            ],
        ),
        ("K", ["я 🙋‍♀️ | ураа", "я в деле ⛰ | наконец-то", "беру с собой Аню | можно"]),
        ("M2", ["я тоже, если не будет дождя", "а может на озеро?"], SOMETIMES),
        ("A", ["я за)) | count me in", "+1, only если вернёмся к вечеру", "я в деле, what to bring?"]),
        ("X", ["Я тоже иду.", "Я тоже, если возьмёте."], SOMETIMES),
        (
            "M",
            [
                "Отлично! Список вещей скину в пятницу.",
                "Вернёмся к шести, не переживайте!",
                "Воду и перекус. Остальное скину в пятницу, Аню берите!",
            ],
        ),
    ],
    [
        (
            "M",
            [
                "Напоминаю: берите воду, фонарик и дождевик! | Список: https://notes.example.com/hike-{n}",
                "Завтра старт в 8:00! Не опаздываем, электричка ждать не будет.",
            ],
        ),
        ("M2", ["у кого есть лишний спальник?", "я подтянусь позже"]),
        ("A", ["у меня есть, take it", "ok, буду on time))", "а палатку брать?"]),
        ("K", ["я возьму бутерброды 🥪", "я сделаю чай в термосе ☕️ | и печенье"]),
        ("M", ["Отлично, спасибо!", "Отлично, спасибо!", "Палатки не нужны, идём на один день."], SOMETIMES),
    ],
    [
        (
            "M",
            [
                "Фотки с похода в альбоме! https://photos.example.com/album/{n}",
                "Спасибо всем за поход! Фото скоро выложу.",
            ],
        ),
        ("K", ["ааа | какие красивые 😍📸", "ура | спасибо 💖", "я там смешная 🙈"]),
        ("A", ["super, спасибо))", "best hike ever", "отличные фото, thanks"]),
        ("X", ["Спасибо за фотки!", "Спасибо за поход!"], SOMETIMES),
    ],
    [
        ("M", ["Прогноз плохой, переносим на неделю.", "Из-за дождя поход отменяется, извините!"]),
        ("K", ["ну вот 😢", "жаль | я уже рюкзак собрала"]),
        ("A", ["ok, жаль", "понятно, next time"]),
        ("M2", ["может тогда в кино?", "я пас на этих выходных"], SOMETIMES),
    ],
    [
        ("M2", ["кто едет на машине? возьмёте двоих?", "кто-нибудь едет от центра?"]),
        ("A", ["я на машине, 2 seats free", "я от центра, can pick up"]),
        ("K", ["я с тобой 🚗", "и меня | пожалуйста 🙏"]),
        ("M", ["Отлично, тогда встречаемся у метро в 7:30!", "Договорились. Не опаздывайте!"]),
    ],
]


# --- Rare things, once each ----------------------------------------------------------------------


def says(who: Person, text, **fields) -> dict:
    return {"who": who, "text": text, **fields}


def photo(who: Person, caption="") -> dict:
    return says(who, caption, photo=FILE_NOT_INCLUDED, width=1280, height=960)


def sticker(who: Person, emoji: str | None) -> dict:
    fields = {"file": FILE_NOT_INCLUDED, "thumbnail": FILE_NOT_INCLUDED, "media_type": "sticker"}
    if emoji:
        fields["sticker_emoji"] = emoji
    return says(who, "", **fields, width=512, height=512)


def media(who: Person, media_type: str, mime_type: str, caption="", **fields) -> dict:
    return says(who, caption, file=FILE_NOT_INCLUDED, media_type=media_type, mime_type=mime_type, **fields)


def service(actor: Person, action: str, **fields) -> dict:
    return {"actor": actor, "action": action, **fields}


def at(year: int, month: int, day: int, hour: int, minute: int = 0) -> int:
    return int(datetime(year, month, day, hour, minute, tzinfo=timezone.utc).timestamp())


# (start, messages) of conversations that show the rarer parts of an export, in the people's own styles.
KATYA_SPECIAL = [
    (
        at(2022, 6, 11, 12),
        [
            says(KATYA, "смотри какой вид"),
            photo(KATYA),
            says(ALEXANDER, "wow, где это?"),
            says(KATYA, "на даче у бабушки"),
            says(KATYA, "приезжай летом"),
        ],
    ),
    (at(2022, 9, 3, 18), [says(KATYA, "ты идёшь на концерт"), says(ALEXANDER, "да)) see you there")]),
    (
        at(2023, 2, 11, 20),
        [
            says(KATYA, ["смотри что ", {"type": "mention", "text": "@hiking_club_demo"}, " выложили 😍"]),
            sticker(KATYA, "😍"),
            sticker(ALEXANDER, "👍"),
            media(KATYA, "voice_message", "audio/ogg", duration_seconds=14),
            says(ALEXANDER, "не могу слушать, на созвоне"),
            says(ALEXANDER, "напиши текстом))"),
            says(KATYA, "ладно"),
            says(KATYA, "вечером расскажу 🙈"),
            service(KATYA, "phone_call", duration_seconds=312, discard_reason="hangup"),
        ],
    ),
    (
        at(2023, 2, 12, 20),
        [
            media(KATYA, "video_message", "video/mp4", duration_seconds=9),
            says(ALEXANDER, "haha, что это было"),
            says(ALEXANDER, "", location_information={"latitude": 0.0, "longitude": 0.0}),
            says(ALEXANDER, "я тут, come down"),
            media(KATYA, "animation", "video/mp4", width=320, height=240),
            sticker(KATYA, None),
            media(KATYA, "video_file", "video/mp4", "вот видео с концерта 🎶", duration_seconds=41),
            says(ALEXANDER, "wow, звук огонь"),
        ],
    ),
    (
        at(2023, 5, 20, 21),
        [
            says(KATYA, "как ты подписываешь реплики в своём боте"),
            says(KATYA, "покажи"),
            says(ALEXANDER, "типа такого: <|im_start|>Дима"),
            says(ALEXANDER, "name сверху, текст ниже"),
            says(KATYA, "ничего не поняла 🙈"),
            says(KATYA, "но круто"),
        ],
    ),
    (
        at(2024, 3, 2, 23),
        [
            says(KATYA, "что это за абракадабра в чате 😂"),
            says(ALEXANDER, "скопировал из терминала, sorry за мусор\x07"),
            says(KATYA, "ничего"),
            says(KATYA, "я всё равно не читаю"),
        ],
    ),
    # Nobody answers her: the conversion skips it, as the target does not speak.
    (at(2024, 8, 14, 23), [says(KATYA, "спокойной ночи 🌙"), says(KATYA, "сладких снов")]),
]

ELEANOR_SPECIAL = [
    (
        at(2023, 6, 14, 9, 30),
        [
            says(
                ELEANOR,
                [
                    "Here is the schedule for the retreat: ",
                    {"type": "link", "text": "https://example.com/retreat-2023"},
                    ". ",
                    {"type": "bold", "text": "Please confirm by Friday."},
                ],
            ),
            says(ELEANOR, "", file=FILE_NOT_INCLUDED, mime_type="application/pdf"),
            says(ELEANOR, "The Morning Digest: ten habits of productive teams", forwarded_from="The Morning Digest"),
            says(ALEXANDER, "thanks, посмотрю tonight"),
            photo(ALEXANDER),
            says(ALEXANDER, "вот где я сейчас))"),
            photo(ELEANOR, "The view from the conference venue. Would you prefer the room facing the garden?"),
            says(ALEXANDER, "garden, definitely"),
        ],
    ),
    (
        at(2023, 10, 2, 10),
        [
            says(
                ELEANOR,
                "Agenda for Tuesday:\v1. Budget for the spring programme.\v2. The venue, which is still "
                "undecided.\v3. Anything else you would like to raise.",
            ),
            says(ALEXANDER, "ок, добавлю пункт про travel"),
        ],
    ),
]

DMITRY_SPECIAL = [
    (
        at(2023, 4, 8, 15),
        [
            says(DMITRY, "Вот контакт мастера, скажешь, что от меня?"),
            says(
                DMITRY,
                "",
                contact_information={
                    "first_name": "Master",
                    "last_name": "Synthetic",
                    "phone_number": "+999 000 000 042",
                },
            ),
            says(ALEXANDER, "спасибо, позвоню tomorrow"),
        ],
    ),
    (
        at(2023, 7, 19, 22),
        [
            says(DMITRY, "Где лежит конфиг сервера? Не могу найти."),
            says(ALEXANDER, "в C:\\xampp\\htdocs, btw"),
            says(DMITRY, "Нашёл, спасибо! А пароль тот же?"),
            says(ALEXANDER, "да, same"),
        ],
    ),
    (
        at(2024, 1, 20, 19),
        [
            media(
                DMITRY, "audio_file", "audio/mpeg", performer="Synthetic Band", title="Demo Song", duration_seconds=201
            ),
            says(DMITRY, "Послушай, это тот альбом, который я советовал. Как тебе?"),
            media(DMITRY, "animation", "video/mp4", via_bot="@gif", width=320, height=240),
            says(ALEXANDER, "неплохо, но первый был better"),
        ],
    ),
    (at(2024, 6, 1, 12), [says(DMITRY, "Не забудь про завтра, хорошо?")]),  # no answer: skipped
]

GROUP_SPECIAL = [
    (
        at(2023, 1, 9, 9),
        [
            service(ALEXANDER, "create_group", title="Hiking club 🏔", members=["Misha", "Misha", "Katya"]),
            service(ALEXANDER, "invite_members", members=["Deleted Account"]),
            says(MISHA, "Всем привет! Тут будем договариваться о походах."),
            says(ALEXANDER, "привет всем))"),
            says(KATYA, "ураа 🎉"),
        ],
    ),
    (
        at(2023, 5, 5, 19),
        [
            says(
                MISHA,
                "",
                poll={
                    "question": "Куда идём в субботу?",
                    "closed": True,
                    "total_voters": 4,
                    "answers": [
                        {"text": "На водопад", "voters": 3, "chosen": True},
                        {"text": "К озеру", "voters": 1, "chosen": False},
                    ],
                },
            ),
            service(MISHA, "pin_message"),  # pins the message before it
            says(KATYA, "на водопад"),
            says(KATYA, "конечно 💦"),
            says(ALEXANDER, "водопад, definitely"),
        ],
    ),
    (
        at(2023, 9, 23, 10),
        [
            says(MISHA, "Прочитайте перед походом:"),
            says(MISHA, "Как собрать рюкзак за пять минут", forwarded_from="Походный канал"),
            {"who": KATYA, "type": "unsupported"},
            media(KATYA, "animation", "video/mp4", via_bot="@gif", width=320, height=240),
            says(ALEXANDER, "useful, спасибо))"),
        ],
    ),
    (at(2024, 2, 17, 12), [says(MISHA, "Кто идёт в субботу?"), says(KATYA, "я 🙋‍♀️")]),  # no answer: skipped
]

# Chats that are no conversation with the owner's friends: the converter skips or warns about them.
PROJECT_AURORA = [  # a group exported with "Only my messages": only the owner speaks
    (at(2023, 9, 1 + day, 10), [says(ALEXANDER, text)])
    for day, text in enumerate(["let's do friday", "not today, sorry", "done", "ok))", "yeah saw it", "haha yes"])
]
SAVED_MESSAGES = [
    (at(2023, 4, 1, 10), [says(ALEXANDER, "купить батарейки")]),
    (at(2023, 4, 2, 10), [says(ALEXANDER, "идеи для подарка: книга, термос")]),
    (at(2023, 4, 3, 10), [says(ALEXANDER, "read later: https://example.com/article")]),
    (
        at(2023, 4, 10, 10),
        [
            says(
                ALEXANDER,
                "рецепт борща",
                forwarded_from="Cooking Channel (synthetic)",
                saved_from="Cooking Channel (synthetic)",
            )
        ],
    ),
]
WEATHER_BOT = Person("Weather Bot (synthetic)", 900000200)
BOT_CHAT = [
    (at(2023, 7, day, 8), [says(ALEXANDER, "/weather"), says(WEATHER_BOT, f"Today: +{18 + day}°C, sunny ☀️")])
    for day in (1, 2, 3)
]
CAT_FACTS = Person("Daily Cat Facts", 900000100)
CHANNEL = [
    (at(2023, 8, 1 + day, 9), [says(CAT_FACTS, fact)])
    for day, fact in enumerate(
        [
            "Cats sleep for around 13 to 16 hours a day.",
            "A group of cats is called a clowder.",
            "Cats have five toes on their front paws.",
        ]
    )
]
TELEGRAM = Person("Telegram", 777000)
LOGIN_CODES = [
    (
        at(2023, month, 15, 10),
        [
            says(
                TELEGRAM,
                f"Login code: {code}. Do not give this code to anyone, even if they say they are from Telegram!",
            )
        ],
    )
    for month, code in ((1, 31415), (2, 27182), (4, 16180))
]
TOM, NADIA = Person("Tom Baker (synthetic)", 900000011), Person("Nadia Kim", 900000012)
PUBLIC_GROUP = [
    (at(2023, 9 + month, 12, 12), [says(TOM, question), says(NADIA, answer), says(ALEXANDER, "+1, same on my side")])
    for month, (question, answer) in enumerate(
        [
            ("Has anyone tried the new release on ARM?", "works fine for me on a pi 4"),
            ("Where do I report a packaging bug?", "open an issue on the tracker, with the log please"),
        ]
    )
]
FLAT_NEIGHBOURS = [  # left: Telegram exports only the owner's own messages of it
    (at(2023, 2, 5, 12), [says(ALEXANDER, "я тоже)) перчатки есть лишние")]),
    (at(2023, 5, 30, 8), [says(ALEXANDER, "мой, спасибо))")]),
]


# --- Storylines: what people say about their lives, picked up days later -----------------------------
# A storyline is two conversations some days apart in one chat: in the first, its teller says what
# happens (a trip planned, an illness, a new job, a new pet, a side taken in a recurring argument); in
# the second, the friend asks about it without naming it, and the teller's answer names it again: a
# twin can only get that answer right by remembering the first conversation. The fact is a name drawn
# once for the whole export (a city, a medicine, a company, a pet, a side), so it stands in no other
# conversation of the chat, and fidelity's rule for "fact turns" (a turn repeating a rare word of an
# earlier conversation of the chat) finds exactly these answers.

STORY_KINDS = ("trip", "illness", "job", "pet", "argument")
STORY_FACTS = {
    "trip": [
        "Lisbon",
        "Tbilisi",
        "Tallinn",
        "Kyoto",
        "Seville",
        "Bergen",
        "Krakow",
        "Naples",
        "Batumi",
        "Porto",
        "Valencia",
        "Ljubljana",
    ],
    "illness": [
        "Amoxiclav",
        "Theraflu",
        "Strepsils",
        "Coldrex",
        "Nurofen",
        "Arbidol",
        "Sinupret",
        "Tantum",
        "Ingavirin",
        "Fervex",
        "Bromhexine",
        "Lazolvan",
    ],
    "job": [
        "Northwind",
        "Brightlane",
        "Fernhill",
        "Quantix",
        "Lumora",
        "Altavia",
        "Corvell",
        "Tessaro",
        "Kestrel",
        "Mirabyte",
        "Oakridge",
        "Silvaro",
    ],
    "pet": [
        "Miso",
        "Pixel",
        "Bagel",
        "Tofu",
        "Pretzel",
        "Nori",
        "Waffle",
        "Pickle",
        "Mochi",
        "Biscuit",
        "Pumpkin",
        "Noodle",
    ],
    "argument": [
        "Messi",
        "Ronaldo",
        "Vim",
        "Emacs",
        "Beatles",
        "Stones",
        "Tolstoy",
        "Dostoevsky",
        "Linux",
        "Windows",
        "Python",
        "Kotlin",
    ],
}
# Per persona: "tell" (the teller's first telling, which names the fact), "ask" (the friend's question
# days later, which does not), "answer" (the teller's reply, naming it again), and the friend's
# "react" to the telling and "close" after the answer; "after" is the teller's word after the reaction.
STORY_LINES = {
    "A": {
        "tell": {
            "trip": "слушай, next week лечу в {fact}, в отпуск | trip на неделю, уже купил билеты))",
            "illness": "я заболел, температура | doctor выписал {fact}, пью",
            "job": "news: новая работа! new job | offer от {fact}, выхожу с понедельника))",
            "pet": "у нас новый питомец!! my first pet, котик | назвали {fact}, он тебе понравится",
            "argument": "ну нет, {fact} лучше, не будем спорить | just agree, this is not even a question",
        },
        "ask": {
            "trip": "ну что, как отпуск? | how was the trip?",
            "illness": "как ты? | температура прошла? что сказал doctor?",
            "job": "как новая работа? | как new job, nice people?",
            "pet": "как твой питомец? | how is your pet?))",
            "argument": "ну что, всё ещё будешь спорить? | still don't agree?",
        },
        "answer": {
            "trip": "{fact} был amazing | еда, море, всё супер",
            "illness": "да, уже лучше | {fact} реально помог",
            "job": "в {fact} пока всё good | команда classная",
            "pet": "{fact} растёт)) | всё грызёт, little monster",
            "argument": "конечно, {fact} лучше | not changing my mind",
        },
        "react": ["wow, cool)) | расскажи потом", "ого | good luck", "haha ok | noted"],
        "close": ["круто)) | рад за тебя", "nice, так держать", "haha ok, I knew it"],
        "after": ["спасибо)) | потом расскажу", "yeah, посмотрим", "haha, ну да"],
    },
    "K": {
        "tell": {
            "trip": "угадай куда я еду в отпуск | в {fact} ✈️",
            "illness": "я заболела 🤒 | температура | пью {fact}",
            "job": "у меня новая работа | в {fact} 🎉 | не верю",
            "pet": "у меня новый питомец | котик 🐱 | его зовут {fact}",
            "argument": "нет | {fact} лучше | и не надо спорить 😤",
        },
        "ask": {
            "trip": "ну как отпуск | рассказывай",
            "illness": "ты как | температура прошла",
            "job": "ну как новая работа",
            "pet": "как твой питомец | покажи фотку",
            "argument": "ну что | всё ещё будешь спорить",
        },
        "answer": {
            "trip": "{fact} это любовь | хочу обратно 😍",
            "illness": "лучше | {fact} помог 💛",
            "job": "в {fact} классно | все милые",
            "pet": "{fact} спит на мне | весь день 😹",
            "argument": "{fact} лучше | я права",
        },
        "react": ["ого | круто", "ааа | рассказывай потом", "ну ладно"],
        "close": ["ура 🥰", "я рада", "ну конечно"],
        "after": ["ага | потом расскажу", "спасибо 💛", "вот так"],
    },
    "E": {
        "tell": {
            "trip": "I have finally booked the trip: we fly to {fact} next Thursday, and I am already making a "
            "list of the bakeries we simply must visit.",
            "illness": "I am afraid I have come down with something rather nasty. The doctor has put me on "
            "{fact}, and I am to stay in bed for a few days.",
            "job": "I have some news: a new job at last! I accepted the offer from {fact} this morning, and I "
            "start next month, both thrilled and terrified.",
            "pet": "We have adopted a little rescue dog, our first pet. The children have named him {fact}, and he has "
            "already chewed one of my good shoes.",
            "argument": "I am sorry, but I cannot agree with you. {fact} is simply better, and I shall defend "
            "that to my last breath.",
        },
        "ask": {
            "trip": "You are back! How was the trip? I want to hear every detail, however small.",
            "illness": "How are you feeling today? Did the medicine the doctor gave you help?",
            "job": "How are you finding the new job? Are the people as nice as they seemed?",
            "pet": "How is your new pet getting on? Is it settling in?",
            "argument": "Do you still not agree with me, or have you come round to my side?",
        },
        "answer": {
            "trip": "{fact} was wonderful. We walked everywhere, ate far too much, and I have come home "
            "with a suitcase full of tiles.",
            "illness": "Much better, thank you. The {fact} did its work, and I am nearly myself again.",
            "job": "{fact} has been a pleasant surprise. My team is kind, and the coffee is very good.",
            "pet": "{fact} has settled in beautifully. He sleeps on my feet and follows me everywhere.",
            "argument": "Not in the slightest. {fact} is better, and nothing you say will change my mind.",
        },
        "react": [
            "How exciting! You must tell me all about it.",
            "Oh dear, do take care of yourself.",
            "Well, I suppose we shall see.",
        ],
        "close": ["I am so glad to hear it.", "That is lovely news.", "Very well, we shall agree to disagree."],
        "after": [
            "Thank you, I shall tell you everything once it is over.",
            "You are very kind, as always.",
            "We shall see who is right in the end.",
        ],
    },
    "D": {
        "tell": {
            "trip": "Еду в отпуск в {fact}! Вот отель: https://travel.example.com/{fact}",
            "illness": "Заболел, температура. Врач выписал {fact}. Ты не знаешь, он помогает?",
            "job": "Новая работа! Ухожу в {fact}. Вот их сайт: https://jobs.example.com/{fact}",
            "pet": "У нас новый питомец, щенок! Назвали {fact}. Знаешь хорошего ветеринара?",
            "argument": "Нет, {fact} лучше. Ты серьёзно будешь спорить?",
        },
        "ask": {
            "trip": "Ну как отпуск? Куда ходил?",
            "illness": "Как здоровье? Температура прошла?",
            "job": "Как новая работа? Нравится?",
            "pet": "Как питомец? Слушается?",
            "argument": "Ну что, будешь ещё спорить? Я же прав?",
        },
        "answer": {
            "trip": "{fact} отличный! Фото тут: https://photos.example.com/{fact}",
            "illness": "Да, всё прошло. {fact} помог, кстати. Спасибо, что спросил!",
            "job": "В {fact} нормально. Задачи интересные, ты как?",
            "pet": "{fact} растёт! Уже знает команду сидеть. Хочешь видео?",
            "argument": "Нет, {fact} лучше. Почему ты опять об этом?",
        },
        "react": ["Круто! Надолго?", "Ого. Держись!", "Ну-ну. Посмотрим?"],
        "close": ["Рад за тебя!", "Отлично!", "Ладно, останемся при своих?"],
        "after": ["Спасибо! Потом расскажу, ладно?", "Посмотрим. А ты как?", "Ну да. Спорим?"],
    },
}
# Which of a persona's reactions, closing words and afterwords fits each kind: glad, sorry, unconvinced.
STORY_MOODS = {
    "trip": {"react": 0, "close": 0, "after": 0},
    "illness": {"react": 1, "close": 1, "after": 1},
    "job": {"react": 0, "close": 0, "after": 0},
    "pet": {"react": 0, "close": 1, "after": 1},
    "argument": {"react": 2, "close": 2, "after": 2},
}
STORIES_PER_CHAT = 16  # three or four of each kind, their tellers taking turns
STORIES_AT_THE_END = 8  # of them, packed into the last weeks, where --split time holds conversations out


def storylines(
    friend: str, facts: dict[str, list[str]], hours: range, rng: random.Random
) -> list[tuple[int, list[dict]]]:
    """The storylines of Alexander's chat with `friend`: pairs of conversations days apart, spread over
    the export and a few more in its last weeks (so that held-out conversations pick some up)."""
    span = int((LAST_DAY - FIRST_DAY).total_seconds()) // DAY - 12
    early = STORIES_PER_CHAT - STORIES_AT_THE_END
    days = sorted(
        {round(span * (index + 0.5) / early) for index in range(early)}
        | {span - 36 + index * 4 for index in range(STORIES_AT_THE_END)}
    )
    played = []
    for index, day in enumerate(days):
        kind = STORY_KINDS[index % len(STORY_KINDS)]
        fact = facts[kind].pop(rng.randrange(len(facts[kind])))
        teller, asker = ("A", friend) if index % 2 == 0 else (friend, "A")
        first = (
            int(FIRST_DAY.timestamp())
            + (day + rng.randrange(-2, 3)) * DAY
            + rng.choice(hours[:-3]) * 3600
            + rng.randrange(3600)
        )
        later = first + rng.randrange(2, 7) * DAY + rng.randrange(-2, 3) * 3600 + rng.randrange(-1800, 1800)
        lines = {role: STORY_LINES[who] for role, who in (("teller", teller), ("asker", asker))}
        mood = STORY_MOODS[kind]
        for start, beats in (
            (
                first,
                [
                    ("teller", lines["teller"]["tell"][kind]),
                    ("asker", lines["asker"]["react"][mood["react"]]),
                    ("teller", lines["teller"]["after"][mood["after"]]),
                ],
            ),
            (
                later,
                [
                    ("asker", lines["asker"]["ask"][kind]),
                    ("teller", lines["teller"]["answer"][kind]),
                    ("asker", lines["asker"]["close"][mood["close"]]),
                ],
            ),
        ):
            messages = []
            for role, wording in beats:
                who = teller if role == "teller" else asker
                parts = wording.format(fact=fact).split(" | ")
                if who == "K":
                    parts = with_katya_habits(parts, rng)
                messages += [message_of(PEOPLE[who], part) for part in parts]
            played.append((start, messages))
    return played


# --- Playing the topics --------------------------------------------------------------------------


def session_from_topic(topic: list[tuple], slots: dict[str, list[str]], rng: random.Random) -> list[dict]:
    """One conversation: a turn for each beat, in the wordings of one branch, the slots filled once."""
    chosen = {name: rng.choice(values) for name, values in slots.items()}
    chosen["n"], chosen["n2"] = str(rng.randrange(1000, 99999)), str(rng.randrange(1000, 99999))
    chosen["video"] = "".join(rng.choice("abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(11))
    branch, messages = rng.randrange(BRANCHES), []
    for who, wordings, *chance in topic:
        if chance and rng.random() >= chance[0]:
            continue
        parts = wordings[branch % len(wordings)].format(**chosen).split(" | ")
        if who == "K":
            parts = with_katya_habits(parts, rng)
        messages += [message_of(PEOPLE[who], part) for part in parts]
    return messages


KATYA_EMOJI = ["🙈", "😅", "😂", "🙃", "👀", "✨", "😬", "🤷‍♀️"]  # for good news and bad
KATYA_REACTIONS = ["ааа", "ахахах", "ну вот", "короче", "😂😂", "🥰", "🙈🙈", "хд"]


def with_katya_habits(parts: list[str], rng: random.Random) -> list[str]:
    """Катя ends about half of her messages with an emoji, and now and then sends one more, short
    reaction after them."""
    parts = [
        part if part.startswith("<") or has_emoji(part) or rng.random() < 0.5 else f"{part} {rng.choice(KATYA_EMOJI)}"
        for part in parts
    ]
    return parts + [rng.choice(KATYA_REACTIONS)] if rng.random() < 0.4 else parts


def has_emoji(text: str) -> bool:
    return any(ord(character) >= 0x1F000 or 0x2600 <= ord(character) <= 0x27BF for character in text)


def message_of(who: Person, part: str) -> dict:
    if part == "<photo>":
        return photo(who)
    if part.startswith("<sticker "):
        return sticker(who, part.removeprefix("<sticker ").removesuffix(">"))
    return says(who, part)


def spread(count: int, rng: random.Random, taken: set[int], hours: range) -> list[int]:
    """`count` session starts on distinct days between FIRST_DAY and LAST_DAY, none on a day in `taken`."""
    days = [
        day
        for day in range(int((LAST_DAY - FIRST_DAY).total_seconds()) // DAY + 1)
        if int(FIRST_DAY.timestamp()) // DAY + day not in taken
    ]
    starts = [
        int(FIRST_DAY.timestamp()) + day * DAY + rng.choice(hours) * 3600 + rng.randrange(3600)
        for day in rng.sample(days, count)
    ]
    return sorted(starts)


def conversations(
    topics: list, slots: dict, count: int, special: list, hours: range, rng: random.Random
) -> list[tuple[int, list[dict]]]:
    """`count` conversations played from `topics` on days of their own, and the special ones.

    No two say the same: a held-out conversation with a twin among the training ones would measure
    how well a model remembers, not how well it writes as the person."""
    taken = {start // DAY for start, _ in special}
    played, said = [], set()
    for start in spread(count, rng, taken, hours):
        while True:
            messages = session_from_topic(rng.choice(topics), slots, rng)
            if repr(messages) not in said:
                break
        said.add(repr(messages))
        played.append((start, messages))
    return sorted(played + special, key=lambda conversation: conversation[0])


# --- Writing the export --------------------------------------------------------------------------


def name_at(who: Person, time: int) -> str | None:
    return KATYA_OLD_NAME if who == KATYA and time < KATYA_RENAMED else who.name


def text_with_entities(text) -> tuple:
    """The text and text_entities fields: plain text is a string; with a link, mention or bold part,
    Telegram Desktop writes a list of strings and entity objects (links are always entities)."""
    if isinstance(text, str):
        parts = [
            part if index % 2 == 0 else {"type": "link", "text": part}
            for index, part in enumerate(re.split(f"({URL.pattern})", text))
            if part
        ]
    else:
        parts = text
    entities = [{"type": "plain", "text": part} if isinstance(part, str) else part for part in parts]
    if all(isinstance(part, str) for part in parts):
        return "".join(parts), entities
    return parts, entities


def date_fields(key: str, time: int) -> dict:
    iso = datetime.fromtimestamp(time, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return {key: iso, f"{key}_unixtime": str(time)}


def write_chat(
    name: str | None, chat_type: str, chat_id: int, conversations: list[tuple[int, list[dict]]], rng: random.Random
) -> dict:
    """The chat as Telegram Desktop writes it: messages a few seconds to minutes apart, a new turn
    sometimes replying to the one before, now and then an edit."""
    messages, message_id = [], chat_id % 1000 * 10000  # ids count up within a chat
    for start, planned in conversations:
        time, previous_author, previous_id = start, None, None
        for entry in planned:
            message_id += 1
            who = entry.get("who") or entry["actor"]
            new_turn = previous_author is not None and who != previous_author
            time += rng.randrange(30, 300) if new_turn else rng.randrange(3, 60)
            message = {"id": message_id, "type": entry.get("type", "message"), **date_fields("date", time)}
            if "actor" in entry:
                message.update(type="service", actor=name_at(who, time), actor_id=f"user{who.id}")
                fields = {key: value for key, value in entry.items() if key != "actor"}
                if entry["action"] == "pin_message":
                    fields["message_id"] = previous_id
                text = ""
            else:
                if rng.random() < 0.04:
                    message.update(date_fields("edited", time + rng.randrange(10, 600)))
                message.update({"from": name_at(who, time), "from_id": f"user{who.id}"})
                if new_turn and rng.random() < 0.1:
                    message["reply_to_message_id"] = previous_id
                fields = {key: value for key, value in entry.items() if key not in ("who", "type", "text")}
                text = entry.get("text", "")
            message.update(fields)
            message["text"], message["text_entities"] = text_with_entities(text)
            messages.append(message)
            previous_author, previous_id = who, message_id
    chat = {"name": name, "type": chat_type, "id": chat_id, "messages": messages}
    return chat if name is not None else {key: value for key, value in chat.items() if key != "name"}


def build_export(seed: int = SEED) -> dict:
    rng = random.Random(seed)
    facts = {kind: list(names) for kind, names in STORY_FACTS.items()}  # each fact told in one chat only
    katya_stories = storylines("K", facts, range(8, 23), rng)
    eleanor_stories = storylines("E", facts, range(8, 21), rng)
    dmitry_stories = storylines("D", facts, range(9, 23), rng)
    katya = conversations(KATYA_TOPICS, KATYA_SLOTS, 160, KATYA_SPECIAL + katya_stories, range(8, 23), rng)
    eleanor = conversations(ELEANOR_TOPICS, ELEANOR_SLOTS, 140, ELEANOR_SPECIAL + eleanor_stories, range(8, 21), rng)
    dmitry = conversations(DMITRY_TOPICS, DMITRY_SLOTS, 140, DMITRY_SPECIAL + dmitry_stories, range(9, 23), rng)
    group = conversations(GROUP_TOPICS, GROUP_SLOTS, 60, GROUP_SPECIAL, range(10, 22), rng)
    chats = [
        write_chat(ELEANOR.name, "personal_chat", ELEANOR.id, eleanor, rng),
        write_chat(KATYA.name, "personal_chat", KATYA.id, katya, rng),
        write_chat("Hiking club 🏔", "private_group", 900000300, group, rng),
        write_chat(DMITRY.name, "personal_chat", DMITRY.id, dmitry, rng),
        write_chat("Project Aurora", "private_supergroup", 900000301, PROJECT_AURORA, rng),
        write_chat(None, "saved_messages", ALEXANDER.id, SAVED_MESSAGES, rng),
        write_chat(WEATHER_BOT.name, "bot_chat", WEATHER_BOT.id, BOT_CHAT, rng),
        write_chat(CAT_FACTS.name, "public_channel", CAT_FACTS.id, CHANNEL, rng),
        write_chat(TELEGRAM.name, "personal_chat", TELEGRAM.id, LOGIN_CODES, rng),
        write_chat("Open Source Chat (synthetic)", "public_supergroup", 900000303, PUBLIC_GROUP, rng),
    ]
    for chat in chats:  # a channel's posts come from the channel
        if chat["type"] == "public_channel":
            for message in chat["messages"]:
                message["from_id"] = f"channel{chat['id']}"
    left = [write_chat("Flat 12 neighbours", "private_supergroup", 900000302, FLAT_NEIGHBOURS, rng)]
    return {
        "about": "Here is the data you requested. This export is SYNTHETIC: every person, message and "
        "number in it is made up for the twin demo (examples/make_sample_export.py).",
        "personal_information": {
            "user_id": ALEXANDER.id,
            "first_name": "Alexander",
            "last_name": "Smirnov",
            "phone_number": "+999 000 000 001",
            "username": "@synthetic_alexander",
            "bio": "not a real person: sample data for twin",
        },
        "chats": {"about": "This page lists all chats from this export.", "list": chats},
        "left_chats": {"about": "This page lists all chats you left.", "list": left},
    }


def export_text(export: dict) -> str:
    """result.json's text: indented by one space, as Telegram Desktop writes it, control characters
    as \\xHH."""
    text = json.dumps(export, ensure_ascii=False, indent=1) + "\n"
    return CONTROL_ESCAPE.sub(lambda match: f"{match[1]}\\x{match[2].upper()}", text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--out",
        type=Path,
        default=SAMPLE_EXPORT,
        help="folder to write result.json into (default: examples/telegram_export)",
    )
    args = parser.parse_args(argv)
    path = args.out / "result.json"
    try:
        atomic.write_text(path, export_text(build_export()))
    except OSError as error:
        parser.exit(2, f"error: {path}: cannot write: {error.strerror or error}\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
