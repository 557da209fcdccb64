from editdecay.cli import app

app()
