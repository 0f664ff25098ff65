"""Word lists the value detectors use; lower case throughout.

GIVEN_NAMES holds common given names from many languages. Names that are also everyday words
or places (Grace, Hope, May, Mark, Paris, Jordan, ...) are left out on purpose: a given name is
only evidence of a person when it cannot be read as something else, and the name detector
needs a given name followed by a capitalised surname anyway.
"""

from __future__ import annotations

GIVEN_NAMES = frozenset("""
aaron abdul abdullah abigail adam adrian ahmed aisha akira alan albert alberto alejandro aleksandr
alessandro alex alexander alexandra alexis alfred ali alice alicia alina alison allison amanda amara
amelia amina amir amit amy ana anastasia andre andrea andreas andrei andrew andrzej angela anika anita
ann anna anne annika anthony antoine antonio anya arjun arthur ashley astrid aurora ava ayaan ayumi
barbara beatriz ben benjamin bernard beth betty bianca bjorn boris brandon brenda brian bruno camila
carl carla carlos carmen carol caroline carolyn catherine cecilia charles charlotte chen cheryl chloe
christian christina christine christopher claire clara claudia colin constantin cristina cynthia
daniel daniela daniele danielle david deborah debra denise dennis diana diane diego dimitri dmitri
dmitry donald donna doris dorothy douglas dylan edward elena eleanor elias elif elijah elisabeth
eliza elizabeth ella ellen emil emily emma emmanuel enrique eric erik erika ethan eugene eva evelyn
fatima felix fernando filip fiona florian francesca francesco francisco frank franz frederik gabriel
gabriela gary george gerald gina giovanni giulia giuseppe gloria gregory gustav hana hannah hans
harold harry hassan heather heidi helen helena henrik henry hiroshi hugo ian igor ilya ines ingrid
irene isaac isabel isabella isabelle ivan jack jacob jane jacqueline james jan jana janet janice jason
javier jean jeffrey jennifer jeremy jerry jessica joan joanna joao joaquin joe johan johann johannes
john jonas jonathan jorge jose joseph joshua juan judith julia julian julie julien juliet justin
kai karen karin karl katarzyna kate katherine kathleen kathryn katrin kayla keith kelly kenji kenneth
kevin khalid kim kimberly klaus kofi kristina kwame kyle lars laura lauren lea leah lena leo leon
leonardo liam linda lisa liu lorenzo louis louise luca lucas lucia luis lukas luke mads magnus
mamadou manuel marco marcus margaret maria mariam marie marina mario marta martha martin martina
mary mateo mathias matteo matthew maximilian megan mehmet melissa mia michael michelle miguel mikael
mikhail milan min mohamed mohammed monica muhammad nadia nancy naomi natalia natalie nathan nicholas
nicola nicolas niklas nikolai nina noah noor nora nuno olga oliver olivia omar oscar pablo pamela
patricia patrick paul paula pedro peter philip philippe pierre piotr priya rachel rafael rahul raj
ravi rebecca ricardo richard robert roberto rohan ronald rosa ruth ryan sabine sahil sakura samantha
samir samuel sandra sara sarah satoshi scott sean sebastian sergei sergio sharon shirley simon sofia
sofie sophia sophie stefan stefanie stephanie stephen steven susan svetlana takeshi tanya tatiana
teresa theresa thomas tiago timothy tobias tomas tomasz ursula valentina valeria vanessa vera
victor vikram vincent virginia walter wei william wojciech xavier yannick yuki yusuf yuto zainab
zhang zoe zofia
aarav abebe abena abhishek ada adaeze adebayo adeola adnan afua agnieszka ahmad aidan aiko aino
akosua alejandra aleksandra alessia alexei alma amadou amal amani amara anders andile aniela anjali
antonia aoife arash arnav asha ashok aurelia ayesha aylin ayodele aziz baptiste bartosz beatrice
bilal bogdan bongani bronwyn bui cai camille catalina cem chiamaka chidi chinedu chioma ciara cillian
cormac dagny dalia damian daria darius deepak deniz desmond dorota duc dunja eamon ebere ekaterina
elif emeka emre enzo erin esra ewa farah farhan farid faisal fatuma femi finn folake gaurav gintaras
giorgos goran gulnara gunnar habib hafsa hakan halima hamza haruto hatice helga hemi hina huong hye
ifeoma ilse inga ioana irina iryna isabela jakub jalen jana jaroslav jelena jiho jin jing jiwoo joon
jorge jovana kaito kamal kamala karim kasia katja kavya kemal kerstin khadija kiri kirsten
kofi kristian ksenia kumar lakshmi latifa laszlo leila lin lindiwe ling lorena lotte luana lucija
magdalena mahmoud malak malik mansur marek mariana marisol marketa matej maya mehdi mei milica
minh miriam mirko moana mohan moses mustafa nadine nam nanami naveen nazanin ngozi nicole niamh
nikhil nils ning nkechi noa nour nuala obinna oisin olafur oleksandr olu oluwaseun omari oona
orla otieno padraig parisa pavel pooja preeti qing radek rania rashid reza riya rohit
roisin rui sadia saeed saif sanjay santiago saoirse sasha seo seun shanthi shreya sigrid simone
sinead siobhan siddharth soo stanislav sunil sven tamar tariq tendai thabo thanh themba thi
tomoko tuan tunde uchenna ulla umar vasile veronika viktor vladimir wanjiru xin yara yasmin yerlan
yiannis yong yosef youssef yu yuna yusra zeynep zhao zoran zuzana
""".split())

# Common family names in languages that write the family name first (Vietnamese, Chinese,
# Korean); "Le" is left out because it is also the French article.
FAMILY_FIRST_SURNAMES = frozenset("""
nguyen tran pham hoang huynh phan vu vo dang bui do ngo duong ly wang zhang liu chen yang huang zhao
zhou xu sun zhu hu guo luo liang song zheng xie han tang feng deng cao peng xiao jiang cai park choi
jung kang cho yoon jang lim shin
""".split())

# Capitalised words that follow a given name without making it a person's name, e.g. in a
# street, organisation or product name ("Elizabeth Street", "Thomas Cook Group").
NOT_SURNAMES = frozenset("""
street st road rd avenue ave lane boulevard drive court way place square park bridge hall house
hospital clinic school college university church cathedral station airport river lake mountain
island bay county city town center centre group inc ltd llc gmbh corp company foundation trust bank
hotel memorial medical cancer institute fund library museum line tower the and of day week month
democrats democrat party republicans union airlines airways motors
""".split())

TITLES = frozenset("mr mrs ms miss dr prof sir madam herr frau".split())

# Special-category vocabularies, by the token; `distinctive` terms are the ones that rarely mean
# anything else, and at least one of them must occur before a column counts (so a colour column
# holding white and black is not read as race).
SPECIAL_VOCABULARIES: dict[str, dict[str, frozenset[str]]] = {
    "race": {
        "terms": frozenset("""white black asian hispanic latino latina latinx caucasian african american
            islander pacific indian eskimo amer native alaska aboriginal maori mixed multiracial biracial
            arab pac""".split()),
        "distinctive": frozenset("hispanic latino latina latinx caucasian eskimo islander aboriginal "
                                 "multiracial biracial".split()),
    },
    "religion": {
        "terms": frozenset("""christian christianity catholic roman protestant orthodox evangelical
            anglican lutheran baptist methodist mormon muslim islam sunni shia jewish judaism hindu
            hinduism buddhist buddhism sikh sikhism jain atheist agnostic secular""".split()),
        "distinctive": frozenset("""christian catholic protestant muslim islam jewish judaism hindu
            buddhist sikh atheist agnostic""".split()),
    },
    "sexual_orientation": {
        "terms": frozenset("heterosexual straight homosexual gay lesbian bisexual asexual pansexual "
                           "queer".split()),
        "distinctive": frozenset("heterosexual homosexual bisexual lesbian asexual pansexual".split()),
    },
    "political_opinion": {
        "terms": frozenset("""democrat democratic republican independent libertarian green labour labor
            conservative liberal socialist communist tory""".split()),
        "distinctive": frozenset("democrat republican libertarian labour tory socialist".split()),
    },
    "marital_status": {
        "terms": frozenset("""married single divorced widowed widow widower separated spouse unmarried
            partnered cohabiting civil partnership""".split()),
        "distinctive": frozenset("married divorced widowed widow widower".split()),
    },
    "sex": {
        "terms": frozenset("male female man woman m f non binary nonbinary intersex".split()),
        "distinctive": frozenset("male female woman nonbinary intersex".split()),
    },
}
