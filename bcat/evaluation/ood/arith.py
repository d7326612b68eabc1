"""Arithmetic word problems, written per language from five templates (opt-in: ``--ood-tasks arith``).

The default math task is :mod:`bcat.evaluation.ood.mgsm` (real GSM8K problems, translated and in
six languages validated by native speakers). This one measures what that does not:

- every one of the 11 languages on the same 30 problems with the same numbers and answers: MGSM
  keeps only 7 Spanish and 6 Hungarian problems (the package's other ones are ignored or fail the
  check against English), and its localised units make answers differ between languages;
- the answer given directly on the first line, the short-answer format bcat tunes on, where MGSM
  asks for a worked solution of up to a few hundred tokens (and costs that much generation);
- one- and two-step arithmetic, easier than GSM8K's problems of two to eight steps.

It is templated by the team, not checked by native speakers, and a model as small as Gemma 3
270M scores about 0 on it too (``results/ood-gemma3-270m/``).

Every language gets the same 30 problems with the same numbers (a parallel set), plus 2 worked
examples used as few-shot demonstrations. The wording was written for each language rather than
translated word by word: counters in Japanese (個, 本, 枚, 冊) and Chinese (个, 支, 块, 本), Thai
classifiers (ลูก, แท่ง, ชิ้น, ฟอง, เล่ม) with the usual spaces around numerals and none between
words, Vietnamese classifiers (quả, cây, chiếc, cuốn), Hungarian singular nouns after numerals
(``12 alma``, accusative ``5 almát``), Romanian ``de`` after numbers whose last two digits are 00
or 20..99 (``23 de mere``, ``105 mere``), French elision (``combien d'oranges``), and gender
agreement where the question word depends on the noun (es ``cuántos/cuántas``, ro ``câți/câte``,
hi ``कितने/कितनी``). Numbers are written with ASCII digits in every language.

Templates (answer):
    basket   a + b - c    objects put into and taken out of a basket
    boxes    a * b        b boxes of a objects each
    eggs     a / b        a eggs packed b to a box (exact)
    library  a - b + c    books lent and returned
    pages    c - a * b    pages left after reading a pages a day for b days
"""

from __future__ import annotations

from typing import Callable

ARITH_LANGS: tuple[str, ...] = ("en", "de", "es", "fr", "hi", "ja", "zh", "th", "vi", "hu", "ro")
"""Languages with arithmetic problems. Arabic is left out: its noun forms after numerals (dual,
plural of 3..10, accusative singular of 11..99) need more care than a template table gives."""

# Numbers per template, chosen by hand so that every answer is a positive whole number.
TEST_NUMBERS: dict[str, list[tuple[int, ...]]] = {
    "basket": [(12, 5, 4), (23, 9, 7), (8, 15, 6), (31, 12, 18), (45, 20, 16), (17, 26, 30)],
    "boxes": [(12, 5), (8, 7), (24, 3), (6, 9), (25, 6), (10, 11)],
    "eggs": [(48, 6), (60, 12), (90, 10), (52, 4), (90, 6), (56, 8)],
    "library": [(120, 35, 18), (250, 64, 27), (86, 40, 12), (300, 125, 60), (145, 23, 41), (72, 19, 33)],
    "pages": [(12, 5, 100), (20, 7, 200), (15, 6, 120), (25, 4, 150), (8, 9, 90), (30, 3, 125)],
}
SHOT_NUMBERS: list[tuple[str, tuple[int, ...], int]] = [("basket", (5, 3, 2), 0), ("library", (60, 14, 9), 0)]
"""Few-shot demonstrations: (template, numbers, object index); numbers not used by any test item."""

ANSWERS: dict[str, Callable[..., int]] = {
    "basket": lambda a, b, c: a + b - c,
    "boxes": lambda a, b: a * b,
    "eggs": lambda a, b: a // b,
    "library": lambda a, b, c: a - b + c,
    "pages": lambda a, b, c: c - a * b,
}

PROMPTS: dict[str, tuple[str, str, str]] = {
    # (instruction, question label, answer label)
    "en": ("Solve the math problem. Write only the final answer as a number.", "Question:", "Answer:"),
    "de": ("Löse die Rechenaufgabe. Schreibe nur das Endergebnis als Zahl.", "Frage:", "Antwort:"),
    "es": ("Resuelve el problema. Escribe solo la respuesta final como un número.", "Pregunta:", "Respuesta:"),
    "fr": ("Résous le problème. Écris seulement la réponse finale sous forme de nombre.", "Question :", "Réponse :"),
    "hi": ("गणित का प्रश्न हल करें। केवल अंतिम उत्तर अंकों में लिखें।", "प्रश्न:", "उत्तर:"),
    "ja": ("次の算数の問題を解いてください。最終的な答えを数字だけで書いてください。", "問題：", "答え："),
    "zh": ("请解答下面的数学题。只写出最终答案的数字。", "问题：", "答案："),
    "th": ("จงแก้โจทย์คณิตศาสตร์ต่อไปนี้ ตอบเป็นตัวเลขเท่านั้น", "โจทย์:", "คำตอบ:"),
    "vi": ("Hãy giải bài toán sau. Chỉ viết đáp số cuối cùng bằng chữ số.", "Câu hỏi:", "Trả lời:"),
    "hu": ("Oldd meg a feladatot! Csak a végeredményt írd le számmal.", "Kérdés:", "Válasz:"),
    "ro": ("Rezolvă problema. Scrie doar răspunsul final, ca număr.", "Întrebare:", "Răspuns:"),
}

NAMES = {"en": "Anna", "de": "Lena", "es": "Lucía", "fr": "Marie", "hi": "सीमा", "ja": "花子", "zh": "小红",
         "th": "มาลี", "vi": "Lan", "hu": "Anna", "ro": "Ioana"}
"""One (female) name per language: pronouns and Hindi verb endings in the templates agree with it."""


def ro_count(n: int, noun: str) -> str:
    """A Romanian number with its noun: ``de`` when the last two digits are 00 or 20..99 (n >= 20).

    >>> ro_count(12, "mere"), ro_count(23, "mere"), ro_count(105, "mere"), ro_count(120, "mere"), ro_count(200, "mere")
    ('12 mere', '23 de mere', '105 mere', '120 de mere', '200 de mere')
    """
    return f"{n} de {noun}" if n >= 20 and (n % 100 == 0 or n % 100 >= 20) else f"{n} {noun}"


# Objects of the two templates whose object varies; each language lists the forms its templates use.
OBJECTS: dict[str, dict[str, list[dict[str, str]]]] = {
    "basket": {
        "en": [{"pl": "apples"}, {"pl": "oranges"}],
        "de": [{"pl": "Äpfel"}, {"pl": "Orangen"}],
        "es": [{"pl": "manzanas", "q": "Cuántas"}, {"pl": "naranjas", "q": "Cuántas"}],
        "fr": [{"pl": "pommes", "de": "de pommes"}, {"pl": "oranges", "de": "d'oranges"}],
        "hi": [{"pl": "सेब", "q": "कितने"}, {"pl": "संतरे", "q": "कितने"}],
        "ja": [{"n": "りんご", "ctr": "個"}, {"n": "みかん", "ctr": "個"}],
        "zh": [{"n": "苹果", "ctr": "个"}, {"n": "橙子", "ctr": "个"}],
        "th": [{"n": "แอปเปิล", "clf": "ลูก"}, {"n": "ส้ม", "clf": "ลูก"}],
        "vi": [{"n": "táo", "clf": "quả"}, {"n": "cam", "clf": "quả"}],
        "hu": [{"nom": "alma", "acc": "almát"}, {"nom": "narancs", "acc": "narancsot"}],
        "ro": [{"pl": "mere", "q": "Câte"}, {"pl": "portocale", "q": "Câte"}],
    },
    "boxes": {
        "en": [{"pl": "pencils"}, {"pl": "cookies"}],
        "de": [{"pl": "Bleistifte"}, {"pl": "Kekse"}],
        "es": [{"pl": "lápices", "q": "Cuántos"}, {"pl": "galletas", "q": "Cuántas"}],
        "fr": [{"pl": "crayons", "de": "de crayons"}, {"pl": "biscuits", "de": "de biscuits"}],
        # Hindi: पेंसिल is feminine (कितनी ... मिलती), बिस्कुट masculine (कितने ... मिलते).
        "hi": [{"pl": "पेंसिलें", "q": "कितनी", "v": "मिलती"}, {"pl": "बिस्कुट", "q": "कितने", "v": "मिलते"}],
        "ja": [{"n": "鉛筆", "ctr": "本"}, {"n": "クッキー", "ctr": "枚"}],
        "zh": [{"n": "铅笔", "ctr": "支"}, {"n": "饼干", "ctr": "块"}],
        "th": [{"n": "ดินสอ", "clf": "แท่ง"}, {"n": "คุกกี้", "clf": "ชิ้น"}],
        "vi": [{"n": "cây bút chì"}, {"n": "chiếc bánh quy"}],
        "hu": [{"nom": "ceruza", "acc": "ceruzát"}, {"nom": "keksz", "acc": "kekszet"}],
        # Romanian: creion is neuter (câte creioane), biscuit masculine (câți biscuiți).
        "ro": [{"pl": "creioane", "q": "Câte"}, {"pl": "biscuiți", "q": "Câți"}],
    },
}

Template = Callable[..., str]

# TEMPLATES[lang][template](numbers..., o=object forms, name=name) -> question text
TEMPLATES: dict[str, dict[str, Template]] = {
    "en": {
        "basket": lambda a, b, c, o, name: (
            f"There are {a} {o['pl']} in a basket. {name} puts {b} more {o['pl']} into the basket and then "
            f"takes out {c} {o['pl']}. How many {o['pl']} are in the basket now?"),
        "boxes": lambda a, b, o, name: (
            f"A box holds {a} {o['pl']}. A school buys {b} boxes. How many {o['pl']} does the school get in total?"),
        "eggs": lambda a, b, o, name: (
            f"A farmer collects {a} eggs and packs them into boxes of {b} eggs each. How many boxes does he fill?"),
        "library": lambda a, b, c, o, name: (
            f"A library has {a} books. On Monday, {b} books are borrowed and {c} books are returned. "
            f"How many books are in the library at the end of Monday?"),
        "pages": lambda a, b, c, o, name: (
            f"A book has {c} pages. {name} reads {a} pages every day for {b} days. "
            f"How many pages does she still have to read?"),
    },
    "de": {
        "basket": lambda a, b, c, o, name: (
            f"In einem Korb liegen {a} {o['pl']}. {name} legt noch {b} {o['pl']} hinein und nimmt dann "
            f"{c} {o['pl']} heraus. Wie viele {o['pl']} liegen jetzt im Korb?"),
        "boxes": lambda a, b, o, name: (
            f"In einer Schachtel sind {a} {o['pl']}. Eine Schule kauft {b} Schachteln. "
            f"Wie viele {o['pl']} bekommt die Schule insgesamt?"),
        "eggs": lambda a, b, o, name: (
            f"Ein Bauer sammelt {a} Eier und verpackt sie in Schachteln mit je {b} Eiern. "
            f"Wie viele Schachteln füllt er?"),
        "library": lambda a, b, c, o, name: (
            f"Eine Bibliothek hat {a} Bücher. Am Montag werden {b} Bücher ausgeliehen und {c} Bücher "
            f"zurückgegeben. Wie viele Bücher sind am Ende des Montags in der Bibliothek?"),
        "pages": lambda a, b, c, o, name: (
            f"Ein Buch hat {c} Seiten. {name} liest {b} Tage lang jeden Tag {a} Seiten. "
            f"Wie viele Seiten muss sie noch lesen?"),
    },
    "es": {
        "basket": lambda a, b, c, o, name: (
            f"En una cesta hay {a} {o['pl']}. {name} mete {b} {o['pl']} más en la cesta y luego saca {c}. "
            f"¿{o['q']} {o['pl']} hay ahora en la cesta?"),
        "boxes": lambda a, b, o, name: (
            f"Una caja contiene {a} {o['pl']}. Una escuela compra {b} cajas. "
            f"¿{o['q']} {o['pl']} recibe la escuela en total?"),
        "eggs": lambda a, b, o, name: (
            f"Un granjero recoge {a} huevos y los guarda en cajas de {b} huevos cada una. ¿Cuántas cajas llena?"),
        "library": lambda a, b, c, o, name: (
            f"Una biblioteca tiene {a} libros. El lunes se prestan {b} libros y se devuelven {c} libros. "
            f"¿Cuántos libros hay en la biblioteca al final del lunes?"),
        "pages": lambda a, b, c, o, name: (
            f"Un libro tiene {c} páginas. {name} lee {a} páginas al día durante {b} días. "
            f"¿Cuántas páginas le quedan por leer?"),
    },
    "fr": {
        "basket": lambda a, b, c, o, name: (
            f"Il y a {a} {o['pl']} dans un panier. {name} ajoute encore {b} {o['pl']} dans le panier, "
            f"puis en retire {c}. Combien {o['de']} y a-t-il maintenant dans le panier ?"),
        "boxes": lambda a, b, o, name: (
            f"Une boîte contient {a} {o['pl']}. Une école achète {b} boîtes. "
            f"Combien {o['de']} l'école reçoit-elle au total ?"),
        "eggs": lambda a, b, o, name: (
            f"Un fermier ramasse {a} œufs et les range dans des boîtes de {b} œufs. Combien de boîtes remplit-il ?"),
        "library": lambda a, b, c, o, name: (
            f"Une bibliothèque possède {a} livres. Lundi, {b} livres sont empruntés et {c} livres sont rendus. "
            f"Combien de livres y a-t-il dans la bibliothèque à la fin de la journée ?"),
        "pages": lambda a, b, c, o, name: (
            f"Un livre compte {c} pages. {name} lit {a} pages par jour pendant {b} jours. "
            f"Combien de pages lui reste-t-il à lire ?"),
    },
    "hi": {
        "basket": lambda a, b, c, o, name: (
            f"एक टोकरी में {a} {o['pl']} हैं। {name} टोकरी में {b} और {o['pl']} डालती है, फिर उसमें से "
            f"{c} {o['pl']} निकाल लेती है। अब टोकरी में {o['q']} {o['pl']} हैं?"),
        "boxes": lambda a, b, o, name: (
            f"एक डिब्बे में {a} {o['pl']} हैं। एक स्कूल {b} डिब्बे खरीदता है। "
            f"स्कूल को कुल {o['q']} {o['pl']} {o['v']} हैं?"),
        "eggs": lambda a, b, o, name: (
            f"एक किसान {a} अंडे इकट्ठा करता है और उन्हें ऐसे डिब्बों में भरता है जिनमें {b}-{b} अंडे आते हैं। "
            f"वह कितने डिब्बे भरता है?"),
        "library": lambda a, b, c, o, name: (
            f"एक पुस्तकालय में {a} किताबें हैं। सोमवार को {b} किताबें उधार ली जाती हैं और {c} किताबें वापस "
            f"की जाती हैं। सोमवार के अंत में पुस्तकालय में कितनी किताबें हैं?"),
        "pages": lambda a, b, c, o, name: (
            f"एक किताब में {c} पन्ने हैं। {name} {b} दिनों तक हर दिन {a} पन्ने पढ़ती है। "
            f"उसे अभी और कितने पन्ने पढ़ने हैं?"),
    },
    "ja": {
        "basket": lambda a, b, c, o, name: (
            f"かごに{o['n']}が{a}{o['ctr']}入っています。{name}さんはかごに{o['n']}をさらに{b}{o['ctr']}入れてから、"
            f"{c}{o['ctr']}取り出しました。今、かごに{o['n']}は何{o['ctr']}入っていますか。"),
        "boxes": lambda a, b, o, name: (
            f"1つの箱に{o['n']}が{a}{o['ctr']}入っています。ある学校がこの箱を{b}箱買いました。"
            f"学校が買った{o['n']}は全部で何{o['ctr']}ですか。"),
        "eggs": lambda a, b, o, name: (
            f"ある農家の人が卵を{a}個集めて、1箱に{b}個ずつ詰めます。卵でいっぱいになる箱は何箱ですか。"),
        "library": lambda a, b, c, o, name: (
            f"図書館に本が{a}冊あります。月曜日に{b}冊が貸し出され、{c}冊が返却されました。"
            f"月曜日の終わりに、図書館には本が何冊ありますか。"),
        "pages": lambda a, b, c, o, name: (
            f"ある本は{c}ページあります。{name}さんは毎日{a}ページずつ、{b}日間読みました。"
            f"あと何ページ残っていますか。"),
    },
    "zh": {
        "basket": lambda a, b, c, o, name: (
            f"篮子里有{a}{o['ctr']}{o['n']}。{name}又往篮子里放了{b}{o['ctr']}{o['n']}，然后拿出了{c}{o['ctr']}。"
            f"现在篮子里有多少{o['ctr']}{o['n']}？"),
        "boxes": lambda a, b, o, name: (
            f"一盒装有{a}{o['ctr']}{o['n']}。一所学校买了{b}盒。这所学校一共买了多少{o['ctr']}{o['n']}？"),
        "eggs": lambda a, b, o, name: (
            f"一位农民收集了{a}个鸡蛋，每{b}个装一盒。他一共能装满多少盒？"),
        "library": lambda a, b, c, o, name: (
            f"一个图书馆有{a}本书。星期一借出了{b}本，还回了{c}本。星期一结束时，图书馆里有多少本书？"),
        "pages": lambda a, b, c, o, name: (
            f"一本书有{c}页。{name}每天读{a}页，连续读了{b}天。她还剩多少页没有读？"),
    },
    "th": {
        "basket": lambda a, b, c, o, name: (
            f"ในตะกร้ามี{o['n']} {a} {o['clf']} {name}ใส่{o['n']}เพิ่มอีก {b} {o['clf']} แล้วหยิบออกไป "
            f"{c} {o['clf']} ตอนนี้ในตะกร้ามี{o['n']}กี่{o['clf']}"),
        "boxes": lambda a, b, o, name: (
            f"กล่องหนึ่งมี{o['n']} {a} {o['clf']} โรงเรียนแห่งหนึ่งซื้อ {b} กล่อง "
            f"โรงเรียนได้{o['n']}ทั้งหมดกี่{o['clf']}"),
        "eggs": lambda a, b, o, name: (
            f"เกษตรกรคนหนึ่งเก็บไข่ได้ {a} ฟอง แล้วนำไปใส่กล่อง กล่องละ {b} ฟอง เขาใส่ไข่ได้เต็มกี่กล่อง"),
        "library": lambda a, b, c, o, name: (
            f"ห้องสมุดแห่งหนึ่งมีหนังสือ {a} เล่ม ในวันจันทร์มีคนยืมหนังสือไป {b} เล่ม และนำหนังสือมาคืน "
            f"{c} เล่ม เมื่อสิ้นวันจันทร์ ห้องสมุดมีหนังสือกี่เล่ม"),
        "pages": lambda a, b, c, o, name: (
            f"หนังสือเล่มหนึ่งมี {c} หน้า {name}อ่านวันละ {a} หน้า เป็นเวลา {b} วัน "
            f"เธอยังต้องอ่านอีกกี่หน้า"),
    },
    "vi": {
        "basket": lambda a, b, c, o, name: (
            f"Trong một cái giỏ có {a} {o['clf']} {o['n']}. {name} bỏ thêm {b} {o['clf']} {o['n']} vào giỏ, "
            f"rồi lấy ra {c} {o['clf']}. Hỏi bây giờ trong giỏ có bao nhiêu {o['clf']} {o['n']}?"),
        "boxes": lambda a, b, o, name: (
            f"Một hộp có {a} {o['n']}. Một trường học mua {b} hộp. "
            f"Hỏi trường học có tất cả bao nhiêu {o['n']}?"),
        "eggs": lambda a, b, o, name: (
            f"Một bác nông dân nhặt được {a} quả trứng và xếp vào các hộp, mỗi hộp {b} quả. "
            f"Hỏi bác xếp được bao nhiêu hộp?"),
        "library": lambda a, b, c, o, name: (
            f"Một thư viện có {a} cuốn sách. Vào thứ Hai, có {b} cuốn sách được mượn đi và {c} cuốn sách "
            f"được trả lại. Hỏi cuối ngày thứ Hai, thư viện có bao nhiêu cuốn sách?"),
        "pages": lambda a, b, c, o, name: (
            f"Một cuốn sách có {c} trang. {name} mỗi ngày đọc {a} trang, đọc liên tục trong {b} ngày. "
            f"Hỏi {name} còn phải đọc bao nhiêu trang nữa?"),
    },
    "hu": {
        "basket": lambda a, b, c, o, name: (
            f"Egy kosárban {a} {o['nom']} van. {name} még {b} {o['acc']} tesz a kosárba, majd kivesz belőle "
            f"{c} {o['acc']}. Hány {o['nom']} van most a kosárban?"),
        "boxes": lambda a, b, o, name: (
            f"Egy dobozban {a} {o['nom']} van. Egy iskola {b} dobozt vásárol. "
            f"Összesen hány {o['acc']} kap az iskola?"),
        "eggs": lambda a, b, o, name: (
            f"Egy gazda {a} tojást gyűjt össze, és {b} darabos dobozokba csomagolja őket. Hány dobozt tölt meg?"),
        "library": lambda a, b, c, o, name: (
            f"Egy könyvtárban {a} könyv van. Hétfőn {b} könyvet kölcsönöznek ki, és {c} könyvet hoznak vissza. "
            f"Hány könyv van a könyvtárban hétfő este?"),
        "pages": lambda a, b, c, o, name: (
            f"Egy könyv {c} oldalas. {name} {b} napon át minden nap {a} oldalt olvas el belőle. "
            f"Hány oldalt kell még elolvasnia?"),
    },
    "ro": {
        "basket": lambda a, b, c, o, name: (
            f"Într-un coș sunt {ro_count(a, o['pl'])}. {name} mai pune în coș {ro_count(b, o['pl'])}, apoi scoate "
            f"{ro_count(c, o['pl'])}. {o['q']} {o['pl']} sunt acum în coș?"),
        "boxes": lambda a, b, o, name: (
            f"O cutie conține {ro_count(a, o['pl'])}. O școală cumpără {ro_count(b, 'cutii')}. "
            f"{o['q']} {o['pl']} primește școala în total?"),
        "eggs": lambda a, b, o, name: (
            f"Un fermier adună {ro_count(a, 'ouă')} și le pune în cutii de câte {ro_count(b, 'ouă')}. "
            f"Câte cutii umple?"),
        "library": lambda a, b, c, o, name: (
            f"O bibliotecă are {ro_count(a, 'cărți')}. Luni sunt împrumutate {ro_count(b, 'cărți')} și sunt "
            f"returnate {ro_count(c, 'cărți')}. Câte cărți sunt în bibliotecă la sfârșitul zilei de luni?"),
        "pages": lambda a, b, c, o, name: (
            f"O carte are {ro_count(c, 'pagini')}. {name} citește câte {ro_count(a, 'pagini')} pe zi, timp de "
            f"{ro_count(b, 'zile')}. Câte pagini mai are de citit?"),
    },
}


def question(lang: str, template: str, numbers: tuple[int, ...], obj: int = 0) -> str:
    """One problem in ``lang``; ``obj`` picks the object of the basket and boxes templates."""
    forms = OBJECTS[template][lang][obj] if template in OBJECTS else {}
    return TEMPLATES[lang][template](*numbers, o=forms, name=NAMES[lang])


def arith_items() -> list[dict]:
    """The parallel problem set: 2 shots + 30 test items per language, in a fixed order."""
    items = []
    for lang in ARITH_LANGS:
        for k, (template, numbers, obj) in enumerate(SHOT_NUMBERS):
            items.append({"id": f"arith-shot{k}", "lang": lang, "split": "shot", "template": template,
                          "question": question(lang, template, numbers, obj), "answer": ANSWERS[template](*numbers)})
        # Round by round through the templates, so that a prefix of the list covers all five.
        for k in range(len(TEST_NUMBERS["basket"])):
            for template, number_sets in TEST_NUMBERS.items():
                numbers = number_sets[k]
                obj = k % 2 if template in OBJECTS else 0  # alternate the objects: 3 items each
                answer = ANSWERS[template](*numbers)
                assert answer > 0 and (template != "eggs" or numbers[0] % numbers[1] == 0), (template, numbers)
                items.append({"id": f"arith-{template}{k}", "lang": lang, "split": "test", "template": template,
                              "question": question(lang, template, numbers, obj), "answer": answer})
    return items


def arith_prompt(lang: str, question_text: str, shots: list[dict]) -> str:
    """Instruction, worked examples, then the question and the answer label (the model completes it)."""
    instruction, q_label, a_label = PROMPTS[lang]

    def label(text: str, value: str) -> str:
        # Full-width colons (ja, zh) take no space after them.
        return f"{text}{value}" if text.endswith("：") else f"{text} {value}"

    blocks = [instruction]
    blocks += [f"{label(q_label, s['question'])}\n{label(a_label, str(s['answer']))}" for s in shots]
    blocks.append(f"{label(q_label, question_text)}\n{a_label}")
    return "\n\n".join(blocks)
